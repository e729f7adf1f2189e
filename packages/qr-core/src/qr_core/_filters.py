"""The filters and the inverse CDF on a head: vLLM's order and rules, in float64.

See ARCHITECTURE.md, design note "Filter order".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qr_core._array import Backend
from qr_core._compiled import compiled
from qr_core._params import RowParams
from qr_core._sync import is_sync_free

__all__ = ["Filtered", "apply_filters", "pick"]

# Larger than any prefix length: marks "this filter does not cut here".
_NO_CUT = 2**62


@dataclass(frozen=True, slots=True)
class Filtered:
    """A head after the filters: what the inverse CDF at u needs (see `apply_filters`)."""

    ids: Any
    z: Any
    cum: Any
    total: Any
    kept: Any
    cut: Any
    unknown: Any
    greedy: Any
    valid_len: Any
    blind: Any
    greedy_retry: Any
    in_prefix: Any
    last_index: Any


def apply_filters(
    xp: Backend,
    x: Any,
    values: Any,
    ids: Any,
    *,
    valid_len: Any,
    tail_empty: Any,
    boundary: Any,
    params: RowParams,
) -> Filtered:
    """Apply the filters to a head (or a fully sorted row): everything before u.

    Args:
        x: The rows' full logits, read only for the mass and size of the tail.
        values: ``(rows, width)`` logits in canonical order (exact for the first ``valid_len``).
        ids: Their token ids.
        valid_len: ``(rows,)`` how many leading entries are exact.
        tail_empty: ``(rows,)`` true when no finite logit lies beyond ``valid_len``.
        boundary: ``(rows,)`` the largest logit not known to be in order, or None.
        params: Per-row parameters (u is not read).

    Returns:
        The kept prefix's unnormalised probabilities, cumulative and total mass,
        and what `pick` needs to tell whether the head decides a row.
    """
    rows, width = values.shape
    pos = xp.arange(width)[None, :]
    valid = pos < valid_len[:, None]
    greedy = params.temperature <= 0
    temp = xp.where(greedy, 1.0, params.temperature)
    head = xp.to_compute(values)
    top = head[:, :1]
    # Unnormalised probabilities relative to the row's most probable token (z = 1 there).
    z = xp.where(valid, xp.exp((head - top) / temp[:, None]), 0.0)

    # Min-p (vLLM applies it first, on the whole distribution at temperature T): the
    # tokens with probability >= min_p times the largest, i.e. z >= min_p.
    min_p = params.min_p
    m_on = min_p > 0
    n_m = xp.count(valid & (z >= min_p[:, None]))
    if boundary is None:
        beyond_kept = xp.full((rows,), False, bool)
    else:
        z_boundary = xp.exp((xp.to_compute(boundary) - head[:, 0]) / temp)
        beyond_kept = z_boundary >= min_p
    m_known = m_on & (tail_empty | (n_m < valid_len) | ~beyond_kept)

    # Top-k: every token whose logit is at least the k-th largest, so ties at the k-th
    # value are all kept. Those ties are all in the exact prefix when k is.
    k = params.top_k
    k_on = k > 0
    k_inside = k <= valid_len
    k_known = k_on & (k_inside | tail_empty)
    kth = _at(xp, head, k - 1)
    n_k = xp.where(k_inside, xp.count(valid & (head >= kth[:, None])), valid_len)

    def cut_at(known: Any, length: Any) -> Any:
        return xp.where(known, length, _NO_CUT)

    # The prefix min-p and top-k keep. A known cut lies inside the exact prefix and an
    # unknown one beyond it, so the smallest known cut is the prefix's length.
    n_mk = xp.minimum(
        xp.minimum(cut_at(k_known, n_k), cut_at(m_known, n_m)), cut_at(tail_empty, valid_len)
    )
    mk_known = n_mk < _NO_CUT
    cum = xp.cumsum(z)
    needs_tail = ~k_on & ~m_on & ~tail_empty
    tail = _tail_mass(
        xp,
        x,
        top=head[:, 0],
        temp=temp,
        ids=ids,
        valid=valid,
        boundary=boundary,
        needed=needs_tail & ~greedy,
    )
    mass = xp.where(mk_known, _at(xp, cum, n_mk - 1), cum[:, -1] + xp.where(needs_tail, tail, 0.0))

    # Top-p on what min-p and top-k kept, renormalised: keep a token while the mass
    # before it is below p (vLLM drops a token once the mass after it, its own
    # included, is at most 1 - p: the same rule).
    top_p = params.top_p
    p_on = top_p < 1
    cum_p = cum / mass[:, None]
    before = xp.concat([xp.full((rows, 1), 0.0, xp.compute_dtype), cum_p[:, :-1]])
    n_p = xp.count(valid & (before < top_p[:, None]))
    last = _at(xp, cum_p, valid_len - 1)
    # With min-p or top-k on but their cut beyond the exact prefix, the mass top-p needs
    # is unknown: the row goes round with a wider head ("blind").
    blind = p_on & ~mk_known & (k_on | m_on)
    p_known = p_on & (mk_known | (~k_on & ~m_on & (valid_len > 0) & (last >= top_p)))

    n_known = xp.minimum(n_mk, cut_at(p_known, n_p))
    unknown = (k_on & ~k_known) | (p_on & ~p_known) | (m_on & ~m_known)
    cut = n_known < _NO_CUT
    kept = xp.maximum(xp.where(cut, n_known, valid_len), xp.full((rows,), 1, np.int64))
    total = xp.where(cut, _at(xp, cum, kept - 1), mass)
    in_prefix = pos < kept[:, None]
    return Filtered(
        ids=ids,
        z=z,
        cum=cum,
        total=total,
        kept=kept,
        cut=cut,
        unknown=unknown,
        greedy=greedy,
        valid_len=valid_len,
        blind=blind,
        greedy_retry=(valid_len == 0) & ~tail_empty,
        in_prefix=in_prefix,
        # Float safety for u next to 1: never step past the last token that adds mass.
        last_index=xp.count(in_prefix & (cum < total[:, None])),
    )


def pick(xp: Backend, x: Any, f: Filtered, u: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The inverse CDF at u over a filtered head.

    Returns:
        token id, rank, probability, candidate count, and a mask of rows the
        head could not decide.
    """
    target = u * f.total
    index = xp.count(f.in_prefix & (f.cum <= target[:, None]))
    index = xp.minimum(index, f.last_index)
    # A filter left unknown cuts beyond the exact prefix, so a known cut decides the row;
    # except top-p on an incomplete mass ("blind"), which may cut before it.
    undecided = (~f.cut & (f.unknown | (index >= f.valid_len))) | f.blind
    retry = xp.where(f.greedy, f.greedy_retry, undecided)
    index = xp.where(f.greedy, 0, index)

    width = f.ids.shape[-1]
    safe = xp.clip(index, 0, width - 1)
    token = _at(xp, f.ids, safe)
    prob = xp.where(f.greedy, 1.0, _at(xp, f.z, safe) / f.total)
    uncut = ~f.greedy & ~f.cut & ~retry
    count = xp.where(f.greedy, 1, xp.where(f.cut, f.kept, _finite_count(xp, x, uncut)))
    return token, index, prob, count, retry


def _at(xp: Backend, x: Any, index: Any) -> Any:
    """``x[r, index[r]]`` with the index clamped into range."""
    safe = xp.clip(index, 0, x.shape[-1] - 1)
    return xp.gather(x, safe[:, None])[:, 0]


def _tail_mass(
    xp: Backend,
    x: Any,
    *,
    top: Any,
    temp: Any,
    ids: Any,
    valid: Any,
    boundary: Any,
    needed: Any,
) -> Any:
    """Unnormalised mass of the logits outside the exact head, ``sum exp((x - top) / T)``.

    One pass over the vocabulary in single precision. The exact head is every
    logit above ``boundary``: compiled (qr_core._compiled), the pass sums the
    others; eager, it writes into a reused buffer and zeroes the head's own
    entries there, so that the head's mass, summed in double precision, is not
    counted twice.
    """
    rows, n = x.shape
    if boundary is None or (not is_sync_free() and not xp.any(needed)):
        return xp.full((rows,), 0.0, xp.compute_dtype)
    work = xp.work_dtype(x)
    if xp.kind == "torch":
        fused = compiled(
            "tail",
            x,
            xp.asarray(top, work),
            xp.asarray(1.0 / temp, work),
            xp.asarray(boundary, work),
        )
        if fused is not None:
            return xp.to_compute(fused)
    buf = xp.scratch("tail", (rows, n), work)
    xp.exp_scaled_into(buf, x, xp.asarray(top, work), xp.asarray(1.0 / temp, work))
    xp.scatter_(buf, ids, xp.where(valid, 0.0, xp.gather(buf, ids)))
    return xp.to_compute(xp.sum(buf, 1))


def _finite_count(xp: Backend, x: Any, needed: Any) -> Any:
    """How many logits of each row are finite, computed only when some row needs it."""
    if not is_sync_free() and not xp.any(needed):
        return xp.full((x.shape[0],), x.shape[1], np.int64)
    return xp.count_finite(x)
