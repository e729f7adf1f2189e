"""Full-vocabulary rows without a sort: find u's bucket by mass, then order only that bucket.

A row with no top-k, no min-p and no top-p (``k = 0, p = 1``) whose u falls
past its head used to be sorted whole. Here one pass instead sorts the row's
tokens into buckets by probability (bucket ``b`` holds the tokens whose
``(top - logit) / T`` lies in ``[b·w, (b+1)·w)``, so buckets run in descending
probability and equal logits share a bucket), summing each bucket's mass. The
cumulative bucket masses locate u; only the tokens of that one bucket are then
put in the canonical order (logit descending, ties to the lower id) and
walked, starting from the mass before the bucket. The last bucket gathers the
far tail (and banned tokens); a row whose u lands there (a mass below about
``vocab · e^-32``) is sorted whole as before. See ARCHITECTURE.md, design note
"Full-vocabulary rows".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qr_core._array import Backend
from qr_core._params import RowParams

__all__ = ["BUCKETS", "BUCKET_WIDTH", "locatable", "locate_rows"]

#: Buckets per row; the last one is the far tail.
BUCKETS = 1024
#: Width in ``(top - logit) / T`` covered by the ordinary buckets.
_SPAN = 32.0
#: Width of one bucket in ``(top - logit) / T``.
BUCKET_WIDTH = _SPAN / (BUCKETS - 1)


def locatable(xp: Backend, params: RowParams) -> Any:
    """Rows this path serves: sampled, with top-k, min-p and top-p all off."""
    return (
        (params.temperature > 0) & ~(params.top_k > 0) & ~(params.min_p > 0) & ~(params.top_p < 1)
    )


def locate_rows(xp: Backend, x: Any, params: RowParams) -> tuple[Any, Any, Any, Any, Any]:
    """Token, rank, probability and candidate count of each row at its u.

    Args:
        x: ``(rows, vocab)`` checked logits of `locatable` rows.
        params: Their parameters, u included.

    Returns:
        The four ``(rows,)`` results and a mask of rows whose u fell in the far
        tail; those rows' results are meaningless and must be computed otherwise.
    """
    rows, n = x.shape
    work = xp.work_dtype(x)
    top = xp.to_compute(xp.amax(x, 1))
    inv_t = 1.0 / params.temperature
    width = BUCKET_WIDTH
    # One fused pass where a compiler is available (qr_core._compiled), else a few eager ones.
    bucket, mass = xp.bucket_mass(x, xp.asarray(top, work), xp.asarray(inv_t, work), width, BUCKETS)
    mass = xp.to_compute(mass)
    cum = xp.cumsum(mass)
    total = cum[:, -1]
    target = params.u * total
    # The first bucket whose cumulative mass exceeds the target, never past the last
    # bucket that adds mass (u within rounding of 1).
    chosen = xp.minimum(xp.count(cum <= target[:, None]), xp.count(cum < total[:, None]))
    far = chosen >= BUCKETS - 1
    chosen = xp.clip(chosen, 0, BUCKETS - 2)
    before = xp.where(chosen > 0, _at(xp, cum, chosen - 1), 0.0)
    in_bucket = bucket == chosen[:, None]
    size = xp.count(in_bucket)
    rank_before = xp.count(bucket < chosen[:, None])
    width_k = max(1, int(xp.to_host_list(xp.amax(size, 0)[None])[0]))
    masked = xp.where(in_bucket, x, float("-inf"))
    values, ids = xp.topk_unordered(masked, min(width_k, n))
    # Canonical order of the bucket: ids ascending, then a stable sort by value descending.
    by_id = xp.argsort_asc(ids)
    values, ids = xp.gather(values, by_id), xp.gather(ids, by_id)
    by_value = xp.argsort_desc_stable(values)
    values, ids = xp.gather(values, by_value), xp.gather(ids, by_value)
    pos = xp.arange(values.shape[-1])[None, :]
    valid = pos < size[:, None]
    zb = xp.where(valid, xp.exp((xp.to_compute(values) - top[:, None]) * inv_t[:, None]), 0.0)
    walk = before[:, None] + xp.cumsum(zb)
    index = xp.count(valid & (walk <= target[:, None]))
    carrying = xp.count(zb > 0)
    index = xp.minimum(index, xp.maximum(carrying - 1, xp.full((rows,), 0, np.int64)))
    token = _at(xp, ids, index)
    prob = _at(xp, zb, index) / total
    count = xp.count_finite(x)
    return token, rank_before + index, prob, count, far


def _at(xp: Backend, x: Any, index: Any) -> Any:
    safe = xp.clip(index, 0, x.shape[-1] - 1)
    return xp.gather(x, safe[:, None])[:, 0]
