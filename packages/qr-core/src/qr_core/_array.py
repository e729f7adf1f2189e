"""A small array-namespace shim so one algorithm serves numpy arrays and torch tensors.

qr_core never imports torch at module level: torch is a heavy, optional
dependency and the package must stay importable without it. A tensor is
recognised by the module its type lives in, and the torch backend imports
torch only when it is first handed such a tensor.

The shim holds only the operations whose spelling differs between numpy and
torch (axis vs dim, take_along_axis vs gather, argpartition vs topk, ...).
Arithmetic, comparisons and boolean operators are written directly in the
algorithms: they mean the same thing on both kinds of array.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from qr_core._sync import is_sync_free

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy.typing as npt
    import torch

    #: A numpy array or a torch tensor (CPU or any device).
    Array: TypeAlias = npt.NDArray[Any] | torch.Tensor

__all__ = ["Backend", "backend_for", "chunk_groups", "is_torch_tensor"]


def is_torch_tensor(value: object) -> bool:
    """Tell whether ``value`` is a torch tensor, without importing torch.

    Args:
        value: Any object.

    Returns:
        True when the object's type is defined in the ``torch`` package.
    """
    return type(value).__module__.split(".", 1)[0] == "torch"


class Backend:
    """Operations on numpy arrays; ``_torch_backend.TorchBackend`` overrides them for tensors.

    One instance is bound to one kind of array (and, for torch, one device),
    so algorithms can create new arrays of the right kind through it.
    """

    kind = "numpy"
    #: Dtype of the small per-row computations (heads of candidates, per-row parameters).
    compute_dtype: Any = np.float64
    int_dtype: Any = np.int64

    #: Elements per block of rows for full-vocabulary temporaries on the host (see `row_block`).
    host_block_elements = 1 << 20

    def __init__(self) -> None:
        # Full-size scratch buffers, reused across calls: allocating and
        # page-faulting a fresh (rows, vocab) buffer on every decode step costs
        # about as much as the arithmetic done in it.
        self._scratch: dict[tuple[object, ...], Any] = {}

    def row_block(self, rows: int, vocab: int) -> int:
        """How many rows one pass of full-vocabulary temporaries should cover.

        On the host, temporaries of about a million elements stay in cache and
        are served again from the heap on the next call, whereas one
        ``(64, 151936)`` float32 temporary is a fresh 39 MB mapping per call
        (above glibc's largest mmap threshold), whose page faults cost more than
        the arithmetic. Accelerators cache their allocations and prefer one
        launch over all rows.
        """
        if self.on_accelerator:
            return rows
        return max(1, min(rows, self.host_block_elements // max(vocab, 1)))

    @property
    def on_accelerator(self) -> bool:
        """True for arrays on a GPU (or another non-CPU device)."""
        return False

    # -- inspection ---------------------------------------------------------------------------

    def is_floating(self, x: Any) -> bool:
        """True for a real floating dtype (half, bfloat16, single, double)."""
        return bool(x.dtype.kind == "f")

    def is_integer(self, x: Any) -> bool:
        """True for a signed or unsigned integer dtype (bool excluded)."""
        return bool(x.dtype.kind in "iu")

    def is_real(self, x: Any) -> bool:
        """True for an integer or floating dtype (bool and complex excluded)."""
        return self.is_floating(x) or self.is_integer(x)

    def dtype_name(self, x: Any) -> str:
        """The dtype as users would write it (``float32``, ``torch.bfloat16``)."""
        return str(x.dtype)

    def owns(self, value: object) -> bool:
        """True when ``value`` is an array of this backend's kind."""
        return isinstance(value, np.ndarray)

    # -- creation and conversion --------------------------------------------------------------

    def asarray(self, value: Any, dtype: Any) -> Any:
        """Convert a scalar or array to this backend's kind, dtype and device."""
        return np.asarray(value, dtype=dtype)

    def arange(self, n: int) -> Any:
        """``[0, 1, ..., n-1]`` as int64."""
        return np.arange(n, dtype=np.int64)

    def full(self, shape: tuple[int, ...], fill: float | int | bool, dtype: Any) -> Any:
        """A new array filled with ``fill``."""
        return np.full(shape, fill, dtype=dtype)

    def to_compute(self, x: Any) -> Any:
        """Cast to :attr:`compute_dtype`."""
        return x.astype(self.compute_dtype, copy=False)

    def to_int(self, x: Any) -> Any:
        """Cast to int64."""
        return x.astype(np.int64, copy=False)

    def cast(self, x: Any, dtype: Any) -> Any:
        """Cast to ``dtype`` (no copy when it already has it)."""
        return x.astype(dtype, copy=False)

    def work_dtype(self, x: Any) -> Any:
        """Dtype of full-vocabulary passes: the input's, at least single precision."""
        return np.float64 if x.dtype == np.float64 else np.float32

    def scratch(self, key: str, shape: tuple[int, int], dtype: Any) -> Any:
        """A reusable uninitialised buffer of ``shape``; its contents are overwritten by callers."""
        rows, cols = shape
        slot = (key, dtype, self._scratch_context())
        buf = self._scratch.get(slot)
        if buf is None or buf.shape[0] < rows * cols:
            buf = self._alloc(rows * cols, dtype)
            self._scratch[slot] = buf
        return buf[: rows * cols].reshape(rows, cols)

    def _alloc(self, n: int, dtype: Any) -> Any:
        return np.empty(n, dtype=dtype)

    def _scratch_context(self) -> object:
        """What a scratch buffer must share with its later uses besides key and dtype."""
        return None

    def contiguous_rows(self, x: Any) -> Any:
        """``x`` with unit stride along its last axis (a copy only when it was not)."""
        if x.strides[-1] == x.itemsize:
            return x
        return np.ascontiguousarray(x)

    def chunk_view(self, x: Any, groups: int, chunks: int) -> Any:
        """View ``x[:, : groups * chunks]`` as ``(rows, groups, chunks)`` without copying.

        Element ``[r, j, c]`` is ``x[r, j * chunks + c]``, so a reduction over
        axis 1 combines strided elements and runs as wide vector operations.
        """
        s0, s1 = x.strides
        return np.lib.stride_tricks.as_strided(
            x, shape=(x.shape[0], groups, chunks), strides=(s0, chunks * s1, s1), writeable=False
        )

    def broadcast_rows(self, x: Any, rows: int) -> Any:
        """Repeat a ``(1, n)`` array to ``(rows, n)`` without copying."""
        return np.broadcast_to(x, (rows, x.shape[-1]))

    def shift_into(self, out: Any, x: Any, shift: Any, lowest: float) -> Any:
        """``out = max(x - shift[:, None], lowest)`` in place (``-inf`` becomes ``lowest``)."""
        np.subtract(x, shift[:, None], out=out)
        np.maximum(out, lowest, out=out)
        return out

    def exp_into(self, out: Any, x: Any) -> Any:
        """``out = exp(x)`` in place."""
        return np.exp(x, out=out)

    def mul_(self, x: Any, y: Any) -> Any:
        """``x *= y`` in place."""
        return np.multiply(x, y, out=x)

    def exp_scaled_into(self, out: Any, x: Any, shift: Any, scale: Any) -> Any:
        """``out = exp((x - shift[:, None]) * scale[:, None])``, computed in place in ``out``."""
        np.subtract(x, shift[:, None], out=out)
        np.multiply(out, scale[:, None], out=out)
        np.exp(out, out=out)
        return out

    def bucket_mass(
        self, x: Any, top: Any, inv_t: Any, width: float, buckets: int
    ) -> tuple[Any, Any]:
        """Each entry's bucket ``min((top - x) * inv_t / width, buckets - 1)`` (int64; ``-inf``
        goes to the last), and per row the sum of ``exp((x - top) * inv_t)`` in each bucket."""
        rows = x.shape[0]
        with np.errstate(all="ignore"):
            d = (top[:, None] - x) * inv_t[:, None]
            z = np.exp(-d)
            bucket = np.minimum(d * (1.0 / width), buckets - 1).astype(np.int64)
        offsets = np.arange(rows, dtype=np.int64)[:, None] * buckets
        flat = np.bincount((bucket + offsets).ravel(), weights=z.ravel(), minlength=rows * buckets)
        return bucket, flat.reshape(rows, buckets)

    def to_host_list(self, x: Any) -> list[Any]:
        """Python scalars (one transfer for a torch tensor on an accelerator)."""
        return list(x.tolist())

    # -- elementwise and reductions -----------------------------------------------------------

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        """``a`` where ``cond`` else ``b`` (either may be a Python scalar)."""
        return np.where(cond, a, b)

    def exp(self, x: Any) -> Any:
        """Elementwise exponential."""
        return np.exp(x)

    def log(self, x: Any) -> Any:
        """Elementwise natural logarithm."""
        return np.log(x)

    def isnan(self, x: Any) -> Any:
        """Elementwise NaN test."""
        return np.isnan(x)

    def minimum(self, a: Any, b: Any) -> Any:
        """Elementwise minimum of two arrays."""
        return np.minimum(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        """Elementwise maximum of two arrays."""
        return np.maximum(a, b)

    def clip(self, x: Any, lo: float, hi: float) -> Any:
        """Clamp into ``[lo, hi]`` (NaN stays NaN)."""
        # Two ufuncs: half the cost of np.clip's argument handling on the small per-row arrays.
        return np.minimum(np.maximum(x, lo), hi)

    def amax(self, x: Any, axis: int) -> Any:
        """Maximum along ``axis`` (NaN propagates)."""
        return np.max(x, axis=axis)

    def amin(self, x: Any, axis: int) -> Any:
        """Minimum along ``axis`` (NaN propagates)."""
        return np.min(x, axis=axis)

    def sum(self, x: Any, axis: int) -> Any:
        """Sum along ``axis``."""
        return np.sum(x, axis=axis)

    def count(self, mask: Any) -> Any:
        """Number of true entries along the last axis, as int64."""
        return mask.sum(axis=-1, dtype=np.int64)

    def any(self, mask: Any) -> bool:
        """True when any entry is true (a device synchronisation on accelerators)."""
        return bool(mask.any())

    def count_finite(self, x: Any) -> Any:
        """Per row, how many entries are not -inf (for logits already checked for NaN and +inf)."""
        rows, n = x.shape
        full = self.full((rows,), n, np.int64)
        # A min pass is far cheaper than a count through a boolean mask, and most rows have no -inf.
        # Asking costs a host read, which sync-free mode (`qr_core.sync_free`) does not make.
        if not is_sync_free() and not self.any(self.amin(x, 1) == float("-inf")):
            return full
        return full - self.count(x == float("-inf"))

    def cumsum(self, x: Any) -> Any:
        """Cumulative sum along the last axis."""
        return np.cumsum(x, axis=-1)

    def concat(self, parts: list[Any]) -> Any:
        """Concatenate along the last axis."""
        return np.concatenate(parts, axis=-1)

    def stack(self, parts: list[Any]) -> Any:
        """Stack along a new first axis."""
        return np.stack(parts)

    # -- indexing and ordering ----------------------------------------------------------------

    def gather(self, x: Any, index: Any) -> Any:
        """``x[r, index[r, j]]`` along the last axis (one row of ``x`` broadcasts)."""
        if x.ndim == 2 and index.ndim == 2:
            # Plain fancy indexing: a third of take_along_axis's cost on small arrays.
            return x[np.arange(x.shape[0])[:, None], index]
        return np.take_along_axis(x, index, axis=-1)

    def scatter_(self, x: Any, index: Any, src: Any) -> None:
        """In place: ``x[r, index[r, j]] = src[r, j]`` (indices must be unique per row)."""
        np.put_along_axis(x, index, src, axis=-1)

    def topk_unordered(self, x: Any, k: int) -> tuple[Any, Any]:
        """Values and indices of the ``k`` largest entries per row, in no particular order.

        NaN counts as larger than every number, so a row with NaN keeps it.
        """
        n = x.shape[-1]
        if k >= n:
            idx = np.broadcast_to(np.arange(n, dtype=np.int64), x.shape)
            return x, idx
        idx = np.argpartition(x, n - k, axis=-1)[:, n - k :].astype(np.int64, copy=False)
        return np.take_along_axis(x, idx, axis=-1), idx

    def argsort_desc_stable(self, x: Any) -> Any:
        """Indices that sort each row descending; equal values keep their order."""
        return np.argsort(-x, axis=-1, kind="stable").astype(np.int64, copy=False)

    def argsort_asc(self, x: Any) -> Any:
        """Indices that sort each row ascending."""
        return np.argsort(x, axis=-1, kind="stable").astype(np.int64, copy=False)

    def row_indices(self, mask: Any) -> Any:
        """The indices of the true entries of a ``(rows,)`` mask (one host read on accelerators)."""
        return np.flatnonzero(mask)

    def take_rows(self, x: Any, mask: Any) -> Any:
        """The rows of ``x`` where ``mask`` is true (a copy)."""
        return x[mask]

    def put_rows_(self, dst: Any, mask: Any, src: Any) -> None:
        """In place: ``dst[mask] = src``."""
        dst[mask] = src


#: Largest CPU tensor (in elements) that goes through numpy instead of torch. On a
#: few thousand elements each torch operation costs about 10 µs of dispatch and a
#: numpy one about 1 µs, and selection is about a hundred such operations: for a
#: small model that is most of a decode step. Both backends run the same code.
SMALL_HOST_ELEMENTS = 1 << 16


def small_host_view(x: object) -> np.ndarray | None:
    """A zero-copy numpy view of a small float32/float64 CPU tensor, else None.

    None in sync-free mode (`qr_core.sync_free`): CPU tensors then take the
    accelerator's code path.
    """
    if not is_torch_tensor(x) or is_sync_free():
        return None
    t: Any = x
    if (
        t.device.type != "cpu"
        or t.numel() > SMALL_HOST_ELEMENTS
        or t.requires_grad
        or str(t.dtype) not in ("torch.float32", "torch.float64")
    ):
        return None
    return t.numpy()  # type: ignore[no-any-return]


def host_view(value: Any) -> Any:
    """``value`` as numpy when it is a CPU tensor (a zero-copy view), else unchanged."""
    if is_torch_tensor(value) and value.device.type == "cpu":
        return value.numpy()
    return value


def backend_for(x: object) -> Backend:
    """The backend for ``x``: torch for a tensor (on its device), numpy otherwise.

    Args:
        x: A numpy array or a torch tensor.

    Returns:
        A fresh backend bound to the kind (and device) of ``x``.
    """
    if is_torch_tensor(x):
        from qr_core._torch_backend import TorchBackend  # noqa: PLC0415 - it subclasses Backend

        return TorchBackend(x.device)  # type: ignore[attr-defined]
    return Backend()


def chunk_groups(n: int, k: int) -> int:
    """How many strided groups to split a row of ``n`` into when looking for its ``k`` largest.

    Returns 1 when a plain partial selection is cheaper (short rows or large k).
    The cost of the two-stage search is about n (one max pass) plus n / g
    (selection over group maxima) plus k * g (selection over the gathered
    candidates), smallest near g = sqrt(n / k). Measured on CPU torch, the
    strided max pass itself slows down beyond about 16 groups, hence the cap.
    """
    if n < 4096 or k * 16 > n:
        return 1
    return max(2, min(16, round(math.sqrt(n / k))))
