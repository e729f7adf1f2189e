"""Filtered rows of small CPU batches: each row's kept prefix, found and walked on the host.

A row with top-k, min-p or top-p on keeps a prefix of the canonical order
(logits descending, equal logits by ascending id). `kept_row` finds a set of
candidates that holds that prefix, every candidate above some logit (an *upper
set*, so ties are whole), orders only the candidates, and applies the filters
there with the rules and the float64 arithmetic of ``qr_core._filters``:

- top-k: every logit at least the k-th largest (a partition, or on long rows only
  the chunks whose maximum reaches the k-th largest chunk maximum);
- min-p: every token whose weight ``exp((x - top) / T)`` is at least min-p, whose
  logits lie above ``top + T · ln(min_p)`` (taken with a margin, then tested exactly);
- top-p alone: the whole row's mass, then threshold heads (``qr_core._full``) until
  one holds the top-p cut; rows of at most `SORT_VOCAB` logits are sorted whole.

A row with more than ``max_head`` candidates (`qr_core._full.MAX_HEAD`), or with
a maximum that is not finite, goes to the general path. See ARCHITECTURE.md,
design note "Filtered rows on the host".
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Kept", "canonical", "kept_row", "pick_kept"]

#: Rows of at most this many logits are handled whole (partition, or a full sort for
#: top-p alone); longer ones through a partial selection or threshold heads.
SORT_VOCAB = 8192
#: Logits per chunk whose maximum bounds the k-th largest logit of a long row.
CHUNK = 32
#: Relative margin on the min-p threshold in logits: covers float32 rounding of the
#: comparison; the exact test ``z >= min_p`` is made on the candidates.
_MIN_P_MARGIN = 1e-4


class Kept(NamedTuple):
    """A filtered row's kept prefix, in canonical order: what the inverse CDF at u needs."""

    ids: np.ndarray  # token ids of the kept prefix
    z: np.ndarray  # their weights exp((x - top) / T), float64
    cum: np.ndarray  # cumulative weights, float64
    total: float  # the kept mass, cum[-1]
    last_index: int  # the last index that adds mass (float safety for u next to 1)


def kept_row(
    xt: Any,
    x: np.ndarray,
    temperature: float,
    *,
    top_k: int,
    top_p: float,
    min_p: float,
    max_head: int,
    full_state: Any,
) -> Kept | None:
    """The kept prefix of one row, or None when no candidate set of at most
    ``max_head`` tokens is known to hold it (the general path takes the row).

    Args:
        xt: The row as a 1-D float32 or float64 CPU tensor.
        x: A numpy view of it.
        temperature: T > 0.
        top_k: 0 or -1 (off), or k.
        top_p: In (0, 1]; 1 is off.
        min_p: In [0, 1); 0 is off.
        max_head: The most candidates sorted.
        full_state: Builds the row's whole-row weights (``qr_core._full``), for top-p
            alone on long rows.
    """
    n = x.size
    top = float(x.max())
    if not math.isfinite(top):
        return None  # NaN, +inf or no finite logit: the general path's rules apply
    ids: np.ndarray | None = None
    if 0 < top_k < n:
        ids = _top_k_ids(xt, x, top_k)
    if min_p > 0:
        threshold = top + temperature * math.log(min_p)
        threshold -= _MIN_P_MARGIN * (1.0 + abs(threshold))
        ids = np.flatnonzero(x >= threshold) if ids is None else ids[x[ids] >= threshold]
    if ids is None:
        if top_p >= 1 or n <= SORT_VOCAB:  # top-k at least the row, or a short row
            ids = np.flatnonzero(x > -np.inf)
        else:
            state = full_state(xt)
            if state is None:  # pragma: no cover - a non-finite maximum returned above
                return None
            return _top_p_alone(x, state, top, temperature=temperature, top_p=top_p, head=max_head)
    if ids.size > max_head:
        return None
    return _walk(x, ids, top, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


def _top_k_ids(xt: Any, x: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of every finite logit at least the k-th largest (ties whole)."""
    n = x.size
    chunks = n // CHUNK
    if n <= SORT_VOCAB:
        kth = np.partition(x, n - k)[n - k]
    elif k * 2 <= chunks:
        return _top_k_by_chunks(xt, x, k, chunks)
    else:
        import torch  # noqa: PLC0415 - the row is a torch tensor

        values, where = torch.topk(xt, k + 1, sorted=False)
        values, where = values.numpy(), where.numpy()
        top = np.partition(values, 1)  # the two smallest of the k + 1 first
        kth, next_value = top[1], top[0]
        if next_value < kth:  # no tie across the k-th: the k largest are these
            ids = np.sort(where[values >= kth])
            return ids if kth > -np.inf else ids[x[ids] > -np.inf]
    if kth == -np.inf:
        return np.flatnonzero(x > -np.inf)
    return np.flatnonzero(x >= kth)


def _top_k_by_chunks(xt: Any, x: np.ndarray, k: int, chunks: int) -> np.ndarray:
    """`_top_k_ids` of a long row from its chunk maxima: the k-th largest chunk maximum
    is a lower bound of the k-th largest logit (k chunks hold a logit at least that
    large), so every logit at least the k-th largest lies in a chunk whose maximum
    reaches the bound, or past the last whole chunk. Only those are read."""
    whole = chunks * CHUNK
    chunk_max = xt[:whole].view(chunks, CHUNK).amax(1).numpy()
    bound = np.partition(chunk_max, chunks - k)[chunks - k]
    picked = np.flatnonzero(chunk_max >= bound)
    ids = (picked[:, None] * CHUNK + np.arange(CHUNK)).ravel()
    if whole < x.size:
        ids = np.concatenate([ids, np.arange(whole, x.size)])
    values = x[ids]
    kth = np.partition(values, values.size - k)[values.size - k]
    if kth == -np.inf:
        return np.flatnonzero(x > -np.inf)
    kept: np.ndarray = ids[values >= kth]  # ascending: chunks in order, then the tail
    return kept


def canonical(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``ids`` (ascending) in canonical order, with their logits as float64.

    A stable sort by logit descending: equal logits keep their ascending ids.
    """
    values = x[ids]
    order = np.argsort(-values, kind="stable")
    return ids[order], values[order].astype(np.float64)


def _walk(
    x: np.ndarray,
    ids: np.ndarray,
    top: float,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    mass: float | None = None,
) -> Kept:
    """Order the candidates ``ids`` (ascending) and apply the filters: qr_core._filters'
    rules. ``mass``: the row's whole mass for top-p alone on a head, else None (the
    candidates hold every token min-p and top-k keep, or the whole row)."""
    ids, head = canonical(x, ids)
    z = np.exp((head - top) / temperature)  # divided by T, as qr_core._filters does
    cum = np.cumsum(z)
    kept = ids.size
    if min_p > 0:
        kept = min(kept, int(np.count_nonzero(z >= min_p)))
    if 0 < top_k < ids.size:
        kept = min(kept, int(np.count_nonzero(head >= head[top_k - 1])))
    if top_p < 1:
        whole = float(cum[kept - 1]) if mass is None else mass
        cum_p = cum[:kept] / whole
        # Keep a token while the mass before it is below p (qr_core._filters).
        kept = 1 + int(np.count_nonzero(cum_p[:-1] < top_p))
    kept = max(kept, 1)
    cum = cum[:kept]
    total = float(cum[-1])
    last = int(np.searchsorted(cum, total, side="left"))
    return Kept(ids[:kept], z[:kept], cum, total, last)


def _top_p_alone(
    x: np.ndarray, state: Any, top: float, *, temperature: float, top_p: float, head: int
) -> Kept | None:
    """Top-p with no other filter on a long row: threshold heads (qr_core._full) until one
    ends past the cut; the mass is the row's whole weight total."""
    from qr_core._full import HEAD_SPANS, head_ids  # noqa: PLC0415 - mutual import

    for span in HEAD_SPANS:
        ids = head_ids(state, float(np.exp(-span)))
        if ids.size > head:
            return None
        # The row's single-precision weights, already at hand, tell a head short of the
        # cut (with room for rounding) without sorting it; the walk weighs in float64.
        if float(np.sum(state.z[ids], dtype=np.float64)) < top_p * state.total * (1 - 1e-6):
            continue
        kept = _walk(
            x, ids, top, temperature=temperature, top_k=0, top_p=top_p, min_p=0.0, mass=state.total
        )
        if kept.ids.size < ids.size:  # the cut lies inside the head: it is exact
            return kept
    return None


def pick_kept(row: Kept, u: float) -> tuple[int, int, float, int]:
    """Token, rank, probability and candidate count at u (``qr_core._filters.pick``)."""
    target = u * row.total
    index = min(int(np.searchsorted(row.cum, target, side="right")), row.last_index)
    return int(row.ids[index]), index, float(row.z[index]) / row.total, int(row.ids.size)
