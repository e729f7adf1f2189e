"""Heads: the largest few logits of each row, and the retry with wider heads.

Selection never orders the whole vocabulary when it does not have to. It
takes a *head*: the largest few hundred logits of each row, found with a
partial selection. Every logit strictly greater than the smallest one fetched
is in the head, so the canonical order of that part is exact. When the
filters' cuts are known inside it, or no filter cuts and ``u`` falls inside
its mass, the head decides the row. The other rows go round again with a
head sixteen times larger, and finally with a full sort.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from qr_core._array import Backend, chunk_groups
from qr_core._checks import check_row_max
from qr_core._errors import TokenSelectionError
from qr_core._filters import Filtered, apply_filters, pick
from qr_core._locate import locatable, locate_rows
from qr_core._params import RowParams, bad_values, raise_bad_value
from qr_core._sync import is_sync_free

__all__ = ["filter_rows", "finish_rows", "first_head", "select_rows"]

logger = logging.getLogger(__name__)

# Each retry looks at a head this many times wider than the last.
_HEAD_GROWTH = 16
# A head wider than 1/_FULL_SORT_FRACTION of the row costs about as much as sorting the row.
_FULL_SORT_FRACTION = 4


def first_head(xp: Backend, params: RowParams, head_size: int, *, validate: bool) -> int:
    """Validate the parameters and size the first head, with one host transfer."""
    sampled = params.temperature > 0
    k_on = params.top_k > 0
    kmax = xp.amax(xp.where(sampled & k_on, params.top_k, 0), 0)
    unlimited = (sampled & ~k_on).any()
    flags = [kmax, sampled.any(), unlimited]
    bad = bad_values(params) if validate else {}
    flags += [mask.any() for mask in bad.values()]
    host = xp.to_host_list(xp.stack([xp.asarray(f, np.int64) for f in flags]))
    for (name, mask), is_bad in zip(bad.items(), host[3:], strict=True):
        if is_bad:
            raise_bad_value(xp, name, mask, getattr(params, name))
    kmax_host, any_sampled, any_unlimited = host[:3]
    if not any_sampled:
        return 1
    if any_unlimited:
        return max(int(kmax_host), head_size)
    return max(int(kmax_host), 1)


def _largest(xp: Backend, x: Any, k: int) -> tuple[Any, Any, Any]:
    """The ``k`` largest logits of each row (any order), their ids, and each row's maximum.

    For long rows this runs in two stages: split the row into ``g`` strided
    groups of ``c = n // g`` chunks, take the maximum of each chunk in one
    vectorised pass, pick the k chunks with the largest maxima, and select
    among their elements (and the ``n - g * c`` trailing ones). Exact: an
    element outside those chunks is at most its chunk's maximum, and each of
    the k chosen chunks holds an element at least that large, so it cannot be
    among the k largest unless tied with the smallest of them, and ties at
    that boundary are excluded from the exact part of a head anyway.
    """
    rows, n = x.shape
    groups = chunk_groups(n, k)
    if groups == 1:
        values, ids = xp.topk_unordered(x, k)
        return values, ids, xp.amax(x, 1)
    chunks = n // groups
    chunk_max = xp.amax(xp.chunk_view(x, groups, chunks), 1)
    row_max = xp.amax(chunk_max, 1)
    _, chunk_ids = xp.topk_unordered(chunk_max, k)
    ids = (chunk_ids[:, :, None] + xp.arange(groups)[None, None, :] * chunks).reshape(
        rows, k * groups
    )
    start = groups * chunks
    if start < n:
        rest = xp.broadcast_rows(xp.arange(n - start)[None, :] + start, rows)
        ids = xp.concat([ids, rest])
        row_max = xp.maximum(row_max, xp.amax(x[:, start:], 1))
    values, pick = xp.topk_unordered(xp.gather(x, ids), k)
    return values, xp.gather(ids, pick), row_max


def select_rows(
    xp: Backend, x: Any, params: RowParams, head: int, *, check: bool
) -> tuple[Any, Any, Any, Any]:
    """Select for every row of ``x``, retrying undecided rows with wider heads."""
    return finish_rows(xp, x, params, head, filter_rows(xp, x, params, head, check=check))


def filter_rows(xp: Backend, x: Any, params: RowParams, head: int, *, check: bool) -> Filtered:
    """Take each row's head (or sort the row) and apply the filters: all but u."""
    rows, n = x.shape
    if (head + 1) * _FULL_SORT_FRACTION >= n:
        order = xp.argsort_desc_stable(x)
        values, ids = xp.gather(x, order), order
        row_max = xp.amax(x, 1) if check else None
        valid_len = xp.count(values > float("-inf"))
        tail_empty = xp.full((rows,), True, bool)
        boundary = None
    else:
        raw_values, raw_ids, row_max = _largest(xp, x, head + 1)
        # Canonical order of the head: ids ascending, then a stable sort by value descending.
        by_id = xp.argsort_asc(raw_ids)
        raw_values, raw_ids = xp.gather(raw_values, by_id), xp.gather(raw_ids, by_id)
        by_value = xp.argsort_desc_stable(raw_values)
        raw_values, raw_ids = xp.gather(raw_values, by_value), xp.gather(raw_ids, by_value)
        boundary = raw_values[:, head]
        values, ids = raw_values[:, :head], raw_ids[:, :head]
        # Only logits strictly above the smallest fetched one are surely all here, in order.
        valid_len = xp.count(values > boundary[:, None])
        tail_empty = boundary == float("-inf")
    if check:
        check_row_max(xp, row_max, error=TokenSelectionError)
    return apply_filters(
        xp,
        x,
        values,
        ids,
        valid_len=valid_len,
        tail_empty=tail_empty,
        boundary=boundary,
        params=params,
    )


def finish_rows(
    xp: Backend, x: Any, params: RowParams, head: int, filtered: Filtered
) -> tuple[Any, Any, Any, Any]:
    """Pick each row's token at its u; rows the head cannot decide go round with a wider one."""
    token, rank, prob, count, retry = pick(xp, x, filtered, params.u)
    if is_sync_free():
        if (head + 1) * _FULL_SORT_FRACTION >= x.shape[1]:
            return token, rank, prob, count  # a fully sorted row is always decided
        # The step's one host read: which rows (usually none) need a wider head. As
        # indices, the wider round reads nothing more unless it too is undecided.
        retry = xp.row_indices(retry)
        if retry.shape[0] == 0:
            return token, rank, prob, count
        logger.debug("head of %d undecided for some rows; widening it", head)
        wider = head * _HEAD_GROWTH
        sub = select_rows(xp, xp.take_rows(x, retry), params.take(xp, retry), wider, check=False)
        for out, part in zip((token, rank, prob, count), sub, strict=True):
            xp.put_rows_(out, retry, part)
        return token, rank, prob, count
    if not xp.any(retry):
        return token, rank, prob, count
    results = (token, rank, prob, count)
    _rows, n = x.shape
    located = retry & locatable(xp, params)
    if xp.any(located):
        # No filter cuts these rows: locate u's bucket by mass instead of sorting (_locate).
        sub_x, sub_params = xp.take_rows(x, located), params.take(xp, located)
        *parts, far = locate_rows(xp, sub_x, sub_params)
        for out, part in zip(results, parts, strict=True):
            xp.put_rows_(out, located, part)
        if xp.any(far):
            logger.debug("u in the far tail of some rows; sorting them")
            sorted_rows = select_rows(
                xp, xp.take_rows(sub_x, far), sub_params.take(xp, far), n, check=False
            )
            for out, part in zip(results, sorted_rows, strict=True):
                _put_nested(xp, out, located, far, part)
        retry = retry & ~located
        if not xp.any(retry):
            return token, rank, prob, count
    logger.debug("head of %d undecided for some rows; widening it", head)
    wider = head * _HEAD_GROWTH
    sub = select_rows(xp, xp.take_rows(x, retry), params.take(xp, retry), wider, check=False)
    for out, part in zip(results, sub, strict=True):
        xp.put_rows_(out, retry, part)
    return token, rank, prob, count


def _put_nested(xp: Backend, out: Any, outer: Any, inner: Any, part: Any) -> None:
    """``out[outer][inner] = part`` in place."""
    level = xp.take_rows(out, outer)
    xp.put_rows_(level, inner, part)
    xp.put_rows_(out, outer, level)
