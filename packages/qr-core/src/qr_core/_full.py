"""Small CPU batches: each row decided on the host, else by the general path.

On a small CPU tensor batch the general head path of ``qr_core._head`` costs
hundreds of small operations per step; at batch 1 that overhead, not the
arithmetic, is the step. Here each row is handled alone, on a zero-copy numpy
view, by what its parameters need:

- greedy (T <= 0): the top token;
- every filter off (``k = 0, p = 1``, no min-p): `prepare_full` (before u) keeps
  the row maximum, the weights ``exp((x - top) / T)``, their total and the finite
  count; at u, a *threshold head*, every token whose weight is at least ``e^-span``
  of the top's (`HEAD_SPANS`), is an upper set of the logits and so a prefix of
  the canonical order, ties whole; the first whose mass exceeds ``u · total`` is
  sorted (logit descending, ids ascending) and walked, which decides the row exactly;
  when u lies past every head that fits, the buckets of ``qr_core._locate``, on
  the host, locate it (`_in_buckets`);
- a filter on: the kept prefix of ``qr_core._kept``, found before u.

Rows neither decides (u in the far tail, NaN or +inf logits, filtered rows with
too many candidates) go through the general path of ``qr_core._head``, all of
them at once. See ARCHITECTURE.md, design notes "Full-vocabulary rows" and
"Filtered rows on the host".
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from qr_core._array import Backend
from qr_core._kept import Kept, canonical, kept_row, pick_kept
from qr_core._locate import BUCKET_WIDTH, BUCKETS

__all__ = ["PreparedFull", "full_batch", "prepare_full"]

#: Narrowest rows this path takes (the compiled small path, qr_core._small, takes rows
#: of up to 4,096 logits first when it is on).
MIN_VOCAB = 2
#: Most rows this path takes: it walks the rows one by one on the host, which beats
#: the general path's whole-batch operations only while the batch is small.
MAX_ROWS = 32
#: Most logits (rows times vocabulary) this path takes, for the same reason.
MAX_ELEMENTS = 1 << 19
#: Most rows, and logits, of a batch with some filter on that this path takes (a batch
#: of one row it takes up to `MAX_ELEMENTS`): a filtered row costs a partial selection
#: of its own, and past these sizes the general path's batched one costs less
#: (measured, design note "Filtered rows on the host").
MAX_FILTERED_ROWS = 8
FILTERED_ELEMENTS = 1 << 17
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
    """True when this module takes ``logits``: a 2-D float CPU tensor (not in sync-free
    mode) of at most `MAX_ROWS` rows and `MAX_ELEMENTS` logits when every row has every
    filter off, else of one row, or of at most `MAX_FILTERED_ROWS` rows and
    `FILTERED_ELEMENTS` logits. ``filters_off``: what the caller knows (None: read from
    ``values``, one host read for tensors)."""
    from qr_core._array import is_torch_tensor  # noqa: PLC0415
    from qr_core._sync import is_sync_free  # noqa: PLC0415

    if (
        not is_torch_tensor(logits)
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
    rows, vocab = (int(n) for n in logits.shape)
    if rows == 1 or (rows <= MAX_FILTERED_ROWS and rows * vocab <= FILTERED_ELEMENTS):
        return True
    return filters_off if filters_off is not None else _all_off(values)


#: Each filter's "off" test: top-k 0 or -1, top-p 1, min-p 0.
_OFF = (("top_k", "le", 0), ("top_p", "ge", 1.0), ("min_p", "le", 0.0))


def _all_off(values: dict[str, object]) -> bool:
    """Whether every row has every filter off (a host read for tensors)."""
    import torch  # noqa: PLC0415

    for name, op, bound in _OFF:
        value: Any = values[name]
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu" or not bool(getattr(value, op)(bound).all()):
                return False
        elif not bool(np.all(getattr(np.asarray(value, dtype=np.float64), f"__{op}__")(bound))):
            return False
    return True


def _host_list(value: Any, rows: int) -> list[float]:
    """A per-row parameter (a scalar, a host array or a CPU tensor) as Python numbers."""
    import torch  # noqa: PLC0415

    if isinstance(value, torch.Tensor):
        if value.ndim == 1 and value.shape[0] == rows:
            return list(value.tolist())
        return list(value.expand(rows).tolist())
    host = np.asarray(value)
    return list(np.broadcast_to(host, (rows,)).tolist())


def prepare_full(logits: Any, values: dict[str, object]) -> PreparedFull | None:
    """Everything of a small CPU batch that does not depend on u.

    Args:
        logits: ``(rows, vocab)`` checked logits accepted by `full_batch`.
        values: The rows' ``temperature``, ``top_k``, ``top_p`` and ``min_p``, scalars,
            host arrays or ``(rows,)`` CPU tensors, as given to the selector.

    Returns:
        The prepared batch: per row a greedy pick (T <= 0), a full-vocabulary row
        (every filter off), a kept prefix (``qr_core._kept``), or a row left to the
        general path. None when a parameter is not a CPU value (the general path).
    """
    import torch  # noqa: PLC0415

    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    x = x.contiguous()
    rows = int(x.shape[0])
    if not all(_is_host(torch, v) for v in values.values()):
        return None
    params = zip(*(_host_list(values[k], rows) for k in _PARAMS), strict=True)
    states = [_state(row, *p) for row, p in zip(x, params, strict=True)]
    return PreparedFull(x, values, states)


#: The per-row parameters, in `_state`'s order.
_PARAMS = ("temperature", "top_k", "top_p", "min_p")


def _is_host(torch: Any, value: Any) -> bool:
    """A scalar, a host array or a CPU tensor (a device tensor stays on the general path)."""
    return not isinstance(value, torch.Tensor) or value.device.type == "cpu"


def _state(xt: Any, temperature: float, top_k: float, top_p: float, min_p: float) -> _State:
    """What row ``xt`` needs before u (see `PreparedFull`)."""
    t = float(temperature)
    if not t > 0:
        return _GREEDY
    k = int(top_k)
    if k <= 0 and top_p >= 1 and min_p <= 0:
        return _row_state(xt, t)
    return kept_row(
        xt,
        xt.numpy(),
        t,
        top_k=k,
        top_p=float(top_p),
        min_p=float(min_p),
        max_head=MAX_HEAD,
        full_state=lambda row: _row_state(row, t),
    )


def _row_state(xt: Any, temperature: float) -> _Row | None:
    """A row's maximum, weights ``exp((x - max) / T)`` with their total (float64), its
    chunk maxima and its finite count. Reductions in torch (vectorised, float64
    accumulation), the weights in place in one numpy array. None for a row with NaN,
    +inf or no finite logit: the general path gives it its (unspecified) token."""
    import torch  # noqa: PLC0415

    x = xt.numpy()
    inv_t = 1.0 / temperature
    low, high = (float(v) for v in torch.aminmax(xt))
    if not math.isfinite(high) or math.isnan(low):
        return None
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


def head_ids(row: _Row, threshold: float) -> np.ndarray:
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
    x = row.x
    for span in HEAD_SPANS:
        # Every logit within span·T of the maximum: a prefix of the canonical order.
        threshold = float(np.exp(-span))
        ids = head_ids(row, threshold)
        if ids.size > MAX_HEAD:
            return None
        if float(np.sum(row.z[ids], dtype=np.float64)) <= target:
            continue
        ids, head = canonical(x, ids)
        # Scaled by 1/T, as the general path's full-vocabulary walk (qr_core._locate) does.
        weights = np.exp((head - row.top) * row.inv_t)
        cum = np.cumsum(weights)
        if not target < cum[-1]:
            continue  # the float64 head mass fell short of the float32 sum's verdict
        index = int(np.searchsorted(cum, target, side="right"))
        return int(ids[index]), index, float(weights[index]) / row.total
    return None


def _in_buckets(row: _Row, target: float) -> tuple[int, int, float] | None:
    """`_in_head` for a row no head decides: the general path's buckets (qr_core._locate)
    on the host. Each token goes to bucket ``floor((top - x) / T / BUCKET_WIDTH)`` (the
    last one gathers the far tail), which falls as the logit rises, so a bucket holds a
    stretch of the canonical order, ties whole. The buckets' masses locate the target;
    only that bucket's tokens are ordered and walked. None when the target lies in the
    far tail (the general path sorts that row)."""
    x = row.x
    with np.errstate(all="ignore"):  # -inf logits: d = inf, the far tail
        d = np.subtract(x.dtype.type(row.top), x)
        d *= x.dtype.type(row.inv_t / BUCKET_WIDTH)
        bucket = np.minimum(d, BUCKETS - 1).astype(np.int64)
    cum = np.cumsum(np.bincount(bucket, weights=row.z, minlength=BUCKETS))
    chosen = min(int(np.count_nonzero(cum <= target)), int(np.count_nonzero(cum < cum[-1])))
    if chosen >= BUCKETS - 1:
        return None
    ids, head = canonical(x, np.flatnonzero(bucket == chosen))
    # Scaled by 1/T, as the general path's full-vocabulary walk (qr_core._locate) does.
    weights = np.exp((head - row.top) * row.inv_t)
    walk = np.cumsum(weights)
    walk += float(cum[chosen - 1]) if chosen else 0.0
    # Never past the bucket's last token that adds mass (target within rounding of its end).
    last = max(int(np.count_nonzero(weights > 0)) - 1, 0)
    index = min(int(np.count_nonzero(walk <= target)), last)
    rank = int(np.count_nonzero(bucket < chosen)) + index
    return int(ids[index]), rank, float(weights[index]) / row.total


def _pick(x: Any, i: int, row: _State, u: float) -> tuple[int, int, float, int] | None:
    """Row ``i``'s token, rank, probability and candidate count at u, or None (general path)."""
    if row is None:
        return None
    if isinstance(row, Kept):
        return pick_kept(row, u)
    if isinstance(row, str):  # greedy: np.argmax takes the first (lowest id) of tied maxima
        return int(np.argmax(x[i].numpy())), 0, 1.0, 1
    target = u * row.total
    found = _in_head(row, target)
    if found is None:
        found = _in_buckets(row, target)
    return None if found is None else (*found, row.finite)


class _Row(NamedTuple):
    x: np.ndarray
    top: float
    inv_t: float
    z: np.ndarray
    total: float
    finite: int
    chunk_z: np.ndarray | None  # the largest weight of each whole chunk of `CHUNK` tokens


#: A greedy row (T <= 0): its top token, lowest id among ties.
_GREEDY = "greedy"
#: What a row holds before u: greedy, a full-vocabulary row, a kept prefix, or None
#: (the general path takes the row).
_State = str | _Row | Kept | None


class PreparedFull:
    """A small CPU batch with everything but u done (see `prepare_full`)."""

    __slots__ = ("_rows", "_values", "x")

    def __init__(self, x: Any, values: dict[str, object], rows: list[_State]) -> None:
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
            found = _pick(self.x, i, row, ui)
            if found is None:
                missed.append(i)
                found = (0, 0, 0.0, 0)
            token.append(found[0])
            rank.append(found[1])
            prob.append(found[2])
            count.append(found[3])
        out = (
            torch.from_numpy(np.array(token, dtype=np.int64)),
            torch.from_numpy(np.array(rank, dtype=np.int64)),
            torch.from_numpy(np.array(prob, dtype=np.float64)),
            torch.from_numpy(np.array(count, dtype=np.int64)),
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
