"""A float64, one-row-at-a-time reference for token selection, written for clarity, not speed.

It follows ARCHITECTURE.md's definition (design note "Filter order": vLLM's
order and rules) literally: canonical order (logit descending, ties to the
lower id), softmax at T, min-p relative to the most probable token, top-k
(every token tied with the k-th kept), top-p on what is left (the crossing
token kept), renormalise, and the first token whose cumulative mass exceeds u.
Sums are exact (math.fsum).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6
"""How close u, p or min-p may come to a boundary before float32 work may legitimately differ.

The implementation sums the mass outside its head in single precision
(relative error about 1e-7) and everything else in double; a boundary closer
than this to the compared value may fall on either side.
"""


@dataclass(frozen=True)
class Pick:
    token_id: int
    token_rank: int
    num_candidates: int
    token_prob: float


def reference_select(
    row: np.ndarray, *, temperature: float, top_k: int, top_p: float, u: float, min_p: float
) -> Pick:
    x = [float(v) for v in np.asarray(row, dtype=np.float64)]
    order = sorted((i for i in range(len(x)) if x[i] > -math.inf), key=lambda i: (-x[i], i))
    if temperature <= 0:
        return Pick(order[0], 0, 1, 1.0)
    top = x[order[0]]
    z = [math.exp((x[i] - top) / temperature) for i in order]
    kept = len(order)
    if min_p > 0:
        kept = sum(1 for w in z if w >= min_p)
    if 0 < top_k < kept:
        kth = x[order[top_k - 1]]
        kept = sum(1 for i in order[:kept] if x[i] >= kth)
    if top_p < 1:
        mass = math.fsum(z[:kept])
        for j in range(kept):
            if math.fsum(z[: j + 1]) / mass >= top_p:
                kept = j + 1
                break
    total = math.fsum(z[:kept])
    for j in range(kept):
        if math.fsum(z[: j + 1]) / total > u:
            return Pick(order[j], j, kept, z[j] / total)
    # u within rounding of 1: the last token that carries mass.
    j = max(i for i in range(kept) if z[i] > 0)
    return Pick(order[j], j, kept, z[j] / total)


def acceptable(
    row: np.ndarray, *, temperature: float, top_k: int, top_p: float, u: float, min_p: float
) -> dict[tuple[int, int, int], float]:
    """Every (token, rank, candidates) the reference gives when u, p and min-p move by TOLERANCE.

    Far from every boundary this is a single answer, so the comparison is exact;
    only a value within TOLERANCE of a boundary admits its neighbour.
    """
    d = TOLERANCE
    answers: dict[tuple[int, int, int], float] = {}
    us = {u, min(u + d, 1 - 1e-12), max(u - d, 1e-12)}
    ps = {top_p} if top_p == 1 else {top_p, min(top_p + d, 1.0), max(top_p - d, 1e-12)}
    mps = {min_p} if min_p == 0 else {min_p, min_p * (1 + d), min_p * (1 - d)}
    for uu, pp, mp in itertools.product(us, ps, mps):
        pick = reference_select(row, temperature=temperature, top_k=top_k, top_p=pp, u=uu, min_p=mp)
        answers[(pick.token_id, pick.token_rank, pick.num_candidates)] = pick.token_prob
    return answers
