"""Random selection problems shared by the numpy and torch property tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from _qr_core_reference import acceptable
from hypothesis import strategies as st
from qr_core import BatchSelectionResult

# A few repeated values make ties (within rows and across the head boundary) common.
_TIE_VALUES = [-math.inf, -3.0, -1.0, 0.0, 0.5, 1.0, 2.0]


@dataclass
class Problem:
    logits: np.ndarray  # (rows, vocab) float32
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    min_p: np.ndarray
    u: np.ndarray
    head_size: int


# Found by hypothesis: top-k = 2 with the 2nd and 3rd logits tied, so the head's exact
# prefix holds only the top token, and top-p < 1. Top-p must wait for the whole top-k mass
# (two candidates), not cut at the first token against the prefix's mass alone.
TIE_AT_TOP_K_BOUNDARY = Problem(
    logits=np.array(
        [[-np.inf] * 19 + [-3.0], [-np.inf] * 17 + [-3.0, -3.0, -1.0]], dtype=np.float32
    ),
    temperature=np.array([0.0, 1.0]),
    top_k=np.array([0, 2]),
    top_p=np.array([1.0, 0.9375]),
    min_p=np.array([0.0, 0.0]),
    u=np.array([1e-10, 0.95]),
    head_size=1,
)


# Found by hypothesis: top-k = 3 with the 3rd and 4th logits tied, top-p and min-p on.
# Min-p's cut (2) is known from the head, top-p's is not, and top-p cuts first (1).
TIE_AT_TOP_K_WITH_MIN_P = Problem(
    logits=np.array([[-np.inf] * 13 + [-3.0, -3.0, -1.0, 0.0]], dtype=np.float32),
    temperature=np.array([1.0]),
    top_k=np.array([3]),
    top_p=np.array([0.5]),
    min_p=np.array([0.25]),
    u=np.array([1e-10]),
    head_size=1,
)


# vLLM's order: min-p keeps logits 0, 0, -1 (z >= 0.3); top-p 0.8 on their renormalised
# mass cuts after the two tied tokens (2 / (2 + e^-1) = 0.845). Top-p on the whole mass
# (the old order) would keep -1 too. Head size 1 forces the head path and its retries;
# the second row puts top-k's tie at the k-th value across the head boundary.
MIN_P_THEN_TOP_P = Problem(
    logits=np.array(
        [[-3.0, 0.0, -1.0, 0.0, -2.0, -np.inf], [1.0, 0.5, 0.5, 0.5, -1.0, -2.0]],
        dtype=np.float32,
    ),
    temperature=np.array([1.0, 1.0]),
    top_k=np.array([0, 2]),
    top_p=np.array([0.8, 1.0]),
    min_p=np.array([0.3, 0.0]),
    u=np.array([1 - 1e-9, 1 - 1e-9]),
    head_size=1,
)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    rows = draw(st.integers(1, 4))
    vocab = draw(st.integers(1, 48))
    value = st.one_of(
        st.sampled_from(_TIE_VALUES),
        st.floats(-12, 12, width=32, allow_nan=False, allow_infinity=False),
    )
    logits = np.array(
        draw(
            st.lists(st.lists(value, min_size=vocab, max_size=vocab), min_size=rows, max_size=rows)
        ),
        dtype=np.float32,
    )
    # Every row needs one finite logit; "a single finite logit" stays a frequent case.
    for r in range(rows):
        if not np.isfinite(logits[r]).any():
            logits[r, draw(st.integers(0, vocab - 1))] = draw(st.floats(-5, 5, width=32))

    def per_row(strategy: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(strategy, min_size=rows, max_size=rows))

    temperature = per_row(st.one_of(st.sampled_from([0.0, -1.0, 1.0]), st.floats(0.05, 5.0)))
    top_k = per_row(st.integers(-1, vocab + 2))
    top_p = per_row(st.one_of(st.just(1.0), st.floats(0.01, 1.0)))
    min_p = per_row(st.one_of(st.just(0.0), st.floats(0.0, 0.99)))
    u = per_row(st.one_of(st.sampled_from([1e-10, 0.5, 1 - 1e-10]), st.floats(1e-9, 1 - 1e-9)))
    # Small heads force the retry and full-sort paths even on short rows.
    head_size = draw(st.sampled_from([1, 2, 3, 5, 256]))
    return Problem(
        logits=logits,
        temperature=np.array(temperature, dtype=np.float64),
        top_k=np.array(top_k, dtype=np.int64),
        top_p=np.array(top_p, dtype=np.float64),
        min_p=np.array(min_p, dtype=np.float64),
        u=np.array(u, dtype=np.float64),
        head_size=head_size,
    )


def assert_matches_reference(
    problem: Problem,
    result: BatchSelectionResult,
    to_numpy: Callable[[Any], np.ndarray],
    logits_used: np.ndarray | None = None,
) -> None:
    """Every row's pick must be the reference's (or its neighbour within TOLERANCE)."""
    logits = problem.logits if logits_used is None else logits_used
    token = to_numpy(result.token_id)
    rank = to_numpy(result.token_rank)
    count = to_numpy(result.num_candidates)
    prob = to_numpy(result.token_prob)
    for r in range(logits.shape[0]):
        answers = acceptable(
            logits[r],
            temperature=float(problem.temperature[r]),
            top_k=int(problem.top_k[r]),
            top_p=float(problem.top_p[r]),
            u=float(problem.u[r]),
            min_p=float(problem.min_p[r]),
        )
        got = (int(token[r]), int(rank[r]), int(count[r]))
        assert got in answers, f"row {r}: got {got}, reference allows {sorted(answers)}"
        assert math.isclose(float(prob[r]), answers[got], rel_tol=1e-5, abs_tol=1e-12)
