"""Small full-vocabulary CPU batches: threshold heads on the host, else the general path.

When every row of a small CPU tensor batch is sampled with no top-k, no min-p
and no top-p (``k = 0, p = 1, T > 0``), the general head path of
``qr_core._head`` costs hundreds of small operations per step; at batch 1 that
overhead, not the arithmetic, is the step. Here, per row on a zero-copy numpy
view:

- `prepare_full` (before u): the row maximum, the weights ``exp((x - top) / T)``
  and their total, and the finite count;
- `PreparedFull.select_rows` (with u): a *threshold head*, every token whose
  weight is at least ``e^-span`` of the top's (`HEAD_SPANS`), is an upper set of
  the logits and so a prefix of the canonical order, ties whole; the first whose
  mass exceeds ``u · total`` is sorted (logit descending, ids ascending) and
  walked, which decides the row exactly.

Rows no head decides (rare: nearly flat rows) go through the general path of
``qr_core._head``, all of them at once: its head, the bucket pass of
``qr_core._locate``, and a sort for far-tail rows. See ARCHITECTURE.md, design
note "Full-vocabulary rows".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from qr_core._array import Backend

__all__ = ["PreparedFull", "full_batch", "prepare_full"]

#: Narrowest rows this path takes (the compiled small path, qr_core._small, takes rows
#: of up to 4,096 logits first when it is on).
MIN_VOCAB = 2
#: Most rows this path takes: it walks the rows one by one on the host, which beats
#: the general path's whole-batch operations only while the batch is small.
MAX_ROWS = 32
#: Most logits (rows times vocabulary) this path takes, for the same reason.
MAX_ELEMENTS = 1 << 19
#: A row's heads, tried in turn: every logit within ``span · T`` of its maximum
#: (probability at least ``e^-span`` of the top token's), a prefix of the canonical order.
HEAD_SPANS = (4.0, 8.0, 16.0)
#: Widest head sorted on the host; a wider one sends its row to the general path.
MAX_HEAD = 8192
#: Tokens per chunk whose maximum is kept, so that a head reads only its chunks.
CHUNK = 256
#: Narrowest rows whose chunk maxima are kept (narrower ones are read whole).
CHUNKED_VOCAB = 1 << 16


def full_batch(logits: Any, values: dict[str, object], filters_off: bool | None) -> bool:
    """True when ``logits`` is a 2-D float CPU tensor (not in sync-free mode) of at most
    `MAX_ROWS` rows whose every row has every filter off (``filters_off``: the caller
    knows; None: read from ``values``, one host read). Temperatures are checked by
    `prepare_full`."""
    from qr_core._array import is_torch_tensor  # noqa: PLC0415
    from qr_core._sync import is_sync_free  # noqa: PLC0415

    if (
        filters_off is False
        or not is_torch_tensor(logits)
        or logits.device.type != "cpu"
        or logits.ndim != 2
        or logits.shape[1] < MIN_VOCAB
        or logits.shape[0] > MAX_ROWS
        or logits.shape[0] * logits.shape[1] > MAX_ELEMENTS
        or logits.requires_grad
        or is_sync_free()
        or str(logits.dtype) not in ("torch.float32", "torch.float64", "torch.bfloat16")
    ):
        return False
    if filters_off:
        return True
    import torch  # noqa: PLC0415

    off = [_all(torch, values[name], op, bound) for name, op, bound in _OFF]
    if any(o is False for o in off):
        return False
    flags = [o for o in off if o is not True]
    return not flags or bool(torch.stack(flags).all())


#: Each filter's "off" test: top-k 0 or -1, top-p 1, min-p 0.
_OFF = (("top_k", "le", 0), ("top_p", "ge", 1.0), ("min_p", "le", 0.0))


def _all(torch: Any, value: Any, op: str, bound: float) -> Any:
    """``all(value <op> bound)``: a Python bool for a scalar, a 0-d tensor otherwise."""
    if isinstance(value, int | float):
        return bool(getattr(float(value), f"__{op}__")(bound))
    if not is_cpu_tensor(torch, value):
        return False
    return getattr(value, op)(bound).all()


def is_cpu_tensor(torch: Any, value: Any) -> bool:
    """A torch tensor on the CPU."""
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"


def prepare_full(logits: Any, values: dict[str, object]) -> PreparedFull | None:
    """Everything of a full-vocabulary batch that does not depend on u.

    Args:
        logits: ``(rows, vocab)`` checked logits accepted by `full_batch`.
        values: The rows' ``temperature``, ``top_k``, ``top_p`` and ``min_p``, scalars
            or ``(rows,)`` tensors, as given to the selector.

    Returns:
        None when some row is greedy (T <= 0): the general path takes the batch.
    """
    import torch  # noqa: PLC0415

    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    x = x.contiguous()
    rows = int(x.shape[0])
    temperature = values["temperature"]
    if isinstance(temperature, torch.Tensor):
        temps = [float(t) for t in temperature.expand(rows).tolist()]
    else:  # a scalar or a host array
        host = np.asarray(temperature, dtype=np.float64)
        temps = [float(t) for t in np.broadcast_to(host, (rows,)).tolist()]
    if not all(t > 0 for t in temps):
        return None
    states = [_row_state(row, t) for row, t in zip(x, temps, strict=True)]
    return PreparedFull(x, values, states)


def _row_state(xt: Any, temperature: float) -> _Row:
    """A row's maximum, weights ``exp((x - max) / T)`` with their total (float64), its
    chunk maxima and its finite count. Reductions in torch (vectorised, float64
    accumulation), the weights in place in one numpy array."""
    import torch  # noqa: PLC0415

    x = xt.numpy()
    inv_t = 1.0 / temperature
    low, high = (float(v) for v in torch.aminmax(xt))
    top = high
    with np.errstate(under="ignore"):
        z = np.subtract(x, x.dtype.type(top))
        z *= x.dtype.type(inv_t)
        np.exp(z, out=z)
    total = float(torch.from_numpy(z).sum(dtype=torch.float64))
    finite = x.size if low > -np.inf else int(np.count_nonzero(x > -np.inf))
    chunk_z = None
    if x.size >= CHUNKED_VOCAB:
        whole = x.size // CHUNK * CHUNK
        chunk_max = xt[:whole].view(-1, CHUNK).amax(1).numpy()
        with np.errstate(under="ignore"):
            chunk_z = np.exp((chunk_max - x.dtype.type(top)) * x.dtype.type(inv_t))
    return _Row(x, top, inv_t, z, total, finite, chunk_z)


def _head_ids(row: _Row, threshold: float) -> np.ndarray:
    """Ascending ids of the tokens whose weight is at least ``threshold``.

    Only chunks whose largest weight reaches it are read (weights rise with the
    logits, so no other chunk holds one), and the few tokens past the last chunk.
    """
    if row.chunk_z is None:
        return np.flatnonzero(row.z >= threshold)
    chunks = np.flatnonzero(row.chunk_z >= threshold)
    n = row.x.size
    if chunks.size * CHUNK * 4 >= n:  # most of the row: one plain pass costs less
        return np.flatnonzero(row.z >= threshold)
    ids = (chunks[:, None] * CHUNK + np.arange(CHUNK)).ravel()
    ids = np.concatenate([ids, np.arange(row.chunk_z.size * CHUNK, n)])
    head: np.ndarray = ids[row.z[ids] >= threshold]
    return head


def _in_head(row: _Row, target: float) -> tuple[int, int, float] | None:
    """Token, rank and probability of ``row`` at ``target`` (u times the row's total)
    from a threshold head, or None when no head of `HEAD_SPANS` holds the target."""
    x, z = row.x, row.z
    for span in HEAD_SPANS:
        # Every logit within span·T of the maximum: a prefix of the canonical order.
        threshold = float(np.exp(-span))
        ids = _head_ids(row, threshold)
        if ids.size > MAX_HEAD:
            return None
        if float(np.sum(z[ids], dtype=np.float64)) <= target:
            continue
        values = x[ids]
        order = np.argsort(-values, kind="stable")  # ids ascending already: ties to the lower id
        ids = ids[order]
        weights = np.exp((values[order].astype(np.float64) - row.top) * row.inv_t)
        cum = np.cumsum(weights)
        if not target < cum[-1]:
            continue  # the float64 head mass fell short of the float32 sum's verdict
        index = int(np.searchsorted(cum, target, side="right"))
        return int(ids[index]), index, float(weights[index]) / row.total
    return None


class _Row(NamedTuple):
    x: np.ndarray
    top: float
    inv_t: float
    z: np.ndarray
    total: float
    finite: int
    chunk_z: np.ndarray | None  # the largest weight of each whole chunk of `CHUNK` tokens


class PreparedFull:
    """A full-vocabulary batch with everything but u done (see `prepare_full`)."""

    __slots__ = ("_rows", "_values", "x")

    def __init__(self, x: Any, values: dict[str, object], rows: list[_Row]) -> None:
        self.x = x  # the logits, float32 or float64, contiguous
        self._values = values
        self._rows = rows

    def select_rows(self, xp: Backend, u: Any) -> tuple[Any, Any, Any, Any]:
        """Token, rank, probability and candidate count per row at ``u`` (``(rows,)``)."""
        import torch  # noqa: PLC0415

        token: list[int] = []
        rank: list[int] = []
        prob: list[float] = []
        count: list[int] = []
        missed: list[int] = []
        for i, (row, ui) in enumerate(zip(self._rows, u.tolist(), strict=True)):
            found = _in_head(row, ui * row.total)
            if found is None:
                missed.append(i)
                found = (0, 0, 0.0)
            token.append(found[0])
            rank.append(found[1])
            prob.append(found[2])
            count.append(row.finite)
        out = (
            torch.tensor(token, dtype=torch.int64),
            torch.tensor(rank, dtype=torch.int64),
            torch.tensor(prob, dtype=torch.float64),
            torch.tensor(count, dtype=torch.int64),
        )
        if missed:
            rows = torch.tensor(missed, dtype=torch.int64)
            for dst, part in zip(out, self._general(xp, rows, u[rows]), strict=True):
                dst[rows] = part
        return out

    def _general(self, xp: Backend, rows: Any, u: Any) -> tuple[Any, Any, Any, Any]:
        """The rows ``rows`` at ``u`` through the general path (head, buckets, sort)."""
        from qr_core._head import select_rows  # noqa: PLC0415
        from qr_core._params import RowParams, row_param  # noqa: PLC0415
        from qr_core._selection import DEFAULT_HEAD_SIZE  # noqa: PLC0415

        n = int(self.x.shape[0])
        params = RowParams(
            **{
                k: xp.take_rows(row_param(xp, k, v, n, integer=k == "top_k"), rows)
                for k, v in self._values.items()
            },
            u=u,
        )
        return select_rows(xp, xp.take_rows(self.x, rows), params, DEFAULT_HEAD_SIZE, check=False)
