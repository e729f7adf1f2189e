"""TokenSelector on numpy arrays: known values, the reference, both paths, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import qr_core._head as head_module
import qr_core._selection as selection_module
from _qr_core_cases import (
    MIN_P_THEN_TOP_P,
    TIE_AT_TOP_K_BOUNDARY,
    TIE_AT_TOP_K_WITH_MIN_P,
    Problem,
    assert_matches_reference,
    problems,
)
from _qr_core_reference import acceptable, reference_select
from hypothesis import example, given, settings
from qr_core import SelectionResult, TokenSelectionError, TokenSelector

ROW = np.array([1.0, 3.0, 2.0, 3.0, -np.inf, 0.0], dtype=np.float32)


def select(row: np.ndarray = ROW, **overrides: float) -> SelectionResult:
    params: dict[str, float] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "u": 0.5}
    params.update(overrides)
    return TokenSelector().select(row, **params)  # type: ignore[arg-type]


class TestKnownValues:
    def test_u_near_zero_picks_the_most_probable_token_lowest_id_among_ties(self) -> None:
        result = select(u=1e-12)
        assert (result.token_id, result.token_rank) == (1, 0)

    def test_u_near_one_picks_the_least_probable_finite_token(self) -> None:
        result = select(u=1 - 1e-12)
        assert result.token_id == 5  # logit 0.0; the -inf entry is never a candidate
        assert result.num_candidates == 5

    def test_cdf_boundaries_follow_the_softmax(self) -> None:
        weights = np.exp(np.array([3.0, 3.0, 2.0, 1.0, 0.0]) - 3.0)
        cdf = np.cumsum(weights) / weights.sum()
        # Just below the first boundary: token 1; just above: token 3 (the tie, higher id).
        assert select(u=cdf[0] - 1e-9).token_id == 1
        assert select(u=cdf[0] + 1e-9).token_id == 3
        assert select(u=cdf[1] + 1e-9).token_id == 2
        assert math.isclose(select(u=cdf[1] + 1e-9).token_prob, weights[2] / weights.sum())

    def test_greedy_for_zero_and_negative_temperature(self) -> None:
        for temperature in (0.0, -1.0, -math.inf):
            result = select(temperature=temperature, u=0.999)
            assert result == SelectionResult(1, 0, 1.0, 1)

    def test_top_k_keeps_every_token_tied_with_the_kth_as_vllm_does(self) -> None:
        # Logits 3.0 (ids 1 and 3) tie: top-k = 1 keeps both, like vLLM's logits >= k-th value.
        result = select(top_k=1, u=0.999)
        assert (result.token_id, result.num_candidates) == (3, 2)
        assert math.isclose(result.token_prob, 0.5)
        assert select(top_k=1, u=0.25).token_id == 1
        assert select(top_k=3, u=0.999).num_candidates == 3  # 3.0, 3.0, 2.0: no tie at the 3rd

    def test_top_p_applies_to_what_min_p_left(self) -> None:
        # Min-p 0.3 keeps logits 3, 3, 2 (mass 2 + e^-1 of them). Top-p 0.8 on that
        # renormalised mass: the two 3.0s hold 2 / (2 + e^-1) = 0.845 >= 0.8, so it cuts
        # after them. On the full mass (top-p before min-p) they hold 0.70 and 2.0 stays.
        result = select(min_p=0.3, top_p=0.8, u=0.999)
        assert (result.token_id, result.num_candidates) == (3, 2)

    def test_top_p_keeps_the_token_that_crosses_p(self) -> None:
        # Two tied tokens hold 2/(2+e^-1+e^-2+e^-3) = 0.70 of the mass; p = 0.5 keeps both.
        result = select(top_p=0.5, u=0.99)
        assert (result.token_id, result.num_candidates) == (3, 2)
        assert math.isclose(result.token_prob, 0.5)

    def test_min_p_keeps_tokens_at_least_min_p_times_the_top(self) -> None:
        # e^-1 = 0.37 >= 0.3 keeps logit 2.0; e^-2 = 0.135 < 0.3 drops the rest.
        assert select(min_p=0.3, u=0.999).num_candidates == 3
        assert select(min_p=0.3, u=0.999).token_id == 2

    def test_vocabulary_of_one(self) -> None:
        row = np.array([0.25], dtype=np.float32)
        assert select(row, u=0.9) == SelectionResult(0, 0, 1.0, 1)

    def test_single_finite_logit(self) -> None:
        row = np.array([-np.inf, -np.inf, 7.0, -np.inf], dtype=np.float64)
        assert select(row, u=0.9, top_p=0.3) == SelectionResult(2, 0, 1.0, 1)

    def test_scalar_and_per_row_parameters_give_the_same_answer(self) -> None:
        block = np.stack([ROW, ROW[::-1].copy()])
        a = TokenSelector().select_batch(block, temperature=0.8, top_k=3, top_p=0.9, u=0.7)
        b = TokenSelector().select_batch(
            block,
            temperature=np.full(2, 0.8),
            top_k=np.full(2, 3),
            top_p=np.full(2, 0.9, dtype=np.float32),
            u=np.array(0.7),
        )
        for name in ("token_id", "token_rank", "token_prob", "num_candidates"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.token_id.dtype == np.int64
        assert a.num_candidates.dtype == np.int64

    def test_half_precision_logits(self) -> None:
        result = TokenSelector().select(
            ROW.astype(np.float16), temperature=1, top_k=0, top_p=1, u=0.5
        )
        assert result.token_id == select(u=0.5).token_id


@settings(max_examples=300, deadline=None)
@given(problems())
@example(TIE_AT_TOP_K_BOUNDARY)
@example(TIE_AT_TOP_K_WITH_MIN_P)
@example(MIN_P_THEN_TOP_P)
def test_batch_matches_the_float64_reference(problem: Problem) -> None:
    result = TokenSelector(head_size=problem.head_size).select_batch(
        problem.logits,
        temperature=problem.temperature,
        top_k=problem.top_k,
        top_p=problem.top_p,
        u=problem.u,
        min_p=problem.min_p,
    )
    assert_matches_reference(problem, result, np.asarray)


def _lm_like(rng: np.random.Generator, rows: int, vocab: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


@pytest.mark.parametrize(
    ("vocab", "scale", "ties"), [(6000, 5.0, False), (9000, 2.0, False), (8192, 1.0, True)]
)
def test_long_rows_match_the_reference_through_the_chunked_head(
    vocab: int, scale: float, ties: bool
) -> None:
    rng = np.random.default_rng(vocab)
    rows = 6
    logits = _lm_like(rng, rows, vocab, scale)
    if ties:  # bfloat16-like coarse logits: long runs of equal values across every boundary
        logits = np.round(logits * 4) / 4
    logits[1, rng.choice(vocab, vocab // 2, replace=False)] = -np.inf
    problem = Problem(
        logits=logits,
        temperature=np.array([0.7, 1.0, 0.0, 1.3, 0.5, 2.0]),
        top_k=np.array([50, 0, 0, 0, 300, -1]),
        top_p=np.array([0.9, 1.0, 1.0, 0.95, 1.0, 1.0]),
        min_p=np.array([0.0, 0.0, 0.0, 0.0, 0.05, 0.001]),
        u=rng.uniform(size=rows),
        head_size=16,
    )
    result = TokenSelector(head_size=16).select_batch(
        logits,
        temperature=problem.temperature,
        top_k=problem.top_k,
        top_p=problem.top_p,
        u=problem.u,
        min_p=problem.min_p,
    )
    assert_matches_reference(problem, result, np.asarray)


class TestHeadAndFullSortAgree:
    """The head path and the full-sort path must choose the same tokens."""

    def _run(self, head_size: int, logits: np.ndarray, **params: object) -> tuple[object, int]:
        calls = 0
        original = head_module.filter_rows

        def counting(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)  # type: ignore[arg-type]

        selection_module.filter_rows = counting  # type: ignore[assignment]
        head_module.filter_rows = counting  # type: ignore[assignment]
        try:
            result = TokenSelector(head_size=head_size).select_batch(logits, **params)  # type: ignore[arg-type]
        finally:
            selection_module.filter_rows = original
            head_module.filter_rows = original
        return result, calls

    def test_forced_paths_agree(self) -> None:
        rng = np.random.default_rng(7)
        rows, vocab = 64, 20000
        logits = _lm_like(rng, rows, vocab, 4.0)
        u = rng.uniform(size=rows)
        # Half the rows need the tail: u close to 1 on a flat distribution.
        u[::2] = 1 - rng.uniform(0, 1e-3, size=rows // 2)
        params = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "u": u}
        head, head_calls = self._run(8, logits, **params)
        full, full_calls = self._run(vocab, logits, **params)
        assert full_calls == 1  # the head is wider than a quarter of the row: one full sort
        # Undecided unfiltered rows are located by bucket mass, not sent round again.
        assert head_calls == 1
        top_p = np.where(np.arange(rows) % 3 == 0, 0.999999, 1.0)
        wide, wide_calls = self._run(8, logits, **{**params, "top_p": top_p})
        assert wide_calls >= 2  # rows with a filter on go round with wider heads
        same = top_p == 1.0  # the other rows renormalise to a different mass
        assert (wide.token_id[same] == head.token_id[same]).mean() > 0.95  # type: ignore[attr-defined]
        agree = head.token_id == full.token_id  # type: ignore[attr-defined]
        for r in np.flatnonzero(~agree):  # only allowed for u within TOLERANCE of a boundary
            answers = acceptable(logits[r], temperature=1.5, top_k=0, top_p=1.0, u=u[r], min_p=0.0)
            assert len(answers) > 1
        assert agree.mean() > 0.95
        np.testing.assert_array_equal(head.num_candidates, full.num_candidates)  # type: ignore[attr-defined]
        np.testing.assert_allclose(head.token_prob, full.token_prob, rtol=1e-5)  # type: ignore[attr-defined]

    def test_head_alone_decides_peaked_rows(self) -> None:
        rng = np.random.default_rng(8)
        logits = _lm_like(rng, 8, 20000, 8.0)
        result, calls = self._run(256, logits, temperature=0.7, top_k=0, top_p=1.0, u=0.5)
        assert calls == 1
        ref = reference_select(logits[3], temperature=0.7, top_k=0, top_p=1.0, u=0.5, min_p=0.0)
        assert result.token_id[3] == ref.token_id  # type: ignore[attr-defined]


class TestPreparedSelection:
    """prepare_batch then select(u) is select_batch, split where u is first needed."""

    def test_one_preparation_finishes_at_many_u_like_select_batch(self) -> None:
        rng = np.random.default_rng(11)
        logits = _lm_like(rng, 5, 3000, 3.0)
        logits[2, :1500] = -np.inf
        params = {
            "temperature": np.array([0.7, 1.0, 0.0, 1.3, 0.9]),
            "top_k": np.array([50, 0, 0, 2, -1]),
            "top_p": np.array([0.9, 1.0, 1.0, 0.5, 0.99]),
            "min_p": np.array([0.0, 0.05, 0.0, 0.0, 0.01]),
        }
        selector = TokenSelector(head_size=8)
        prepared = selector.prepare_batch(logits, **params)  # type: ignore[arg-type]
        assert prepared.rows == 5
        for u in (rng.uniform(size=5), np.full(5, 1 - 1e-9), 1e-9):
            got = prepared.select(u)
            want = selector.select_batch(logits, u=u, **params)  # type: ignore[arg-type]
            for a, b in zip(
                (got.token_id, got.token_rank, got.token_prob, got.num_candidates),
                (want.token_id, want.token_rank, want.token_prob, want.num_candidates),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)

    def test_u_is_checked_when_it_arrives(self) -> None:
        prepared = TokenSelector().prepare_batch(
            np.zeros((2, 4), dtype=np.float32), temperature=1.0, top_k=0, top_p=1.0
        )
        with pytest.raises(TokenSelectionError, match=r"u must be .* got 0\.0 at row 1"):
            prepared.select(np.array([0.5, 0.0]))
        with pytest.raises(TokenSelectionError, match=r"u must be a scalar or have shape \(2,\)"):
            prepared.select(np.array([0.5, 0.5, 0.5]))
        unchecked = TokenSelector().prepare_batch(
            np.zeros((2, 4), dtype=np.float32), temperature=1.0, top_k=0, top_p=1.0, validate=False
        )
        assert unchecked.select(0.5).token_id.shape == (2,)


class TestBadInput:
    @pytest.mark.parametrize(
        ("name", "value", "fragment"),
        [
            ("u", 0.0, "u must be in the open interval (0, 1); got 0.0"),
            ("u", 1.0, "got 1.0"),
            ("u", math.nan, "got nan"),
            ("top_k", -2, "top_k must be an integer >= 1, or 0 or -1"),
            ("top_p", 0.0, "top_p must be in (0, 1]"),
            ("top_p", 1.5, "got 1.5"),
            ("min_p", 1.0, "min_p must be in [0, 1)"),
            ("min_p", -0.1, "got -0.1"),
            ("temperature", math.nan, "temperature must be a finite number"),
            ("temperature", math.inf, "got inf"),
        ],
    )
    def test_out_of_range_parameters(self, name: str, value: float, fragment: str) -> None:
        with pytest.raises(TokenSelectionError, match="row 0") as info:
            select(**{name: value})
        assert fragment in str(info.value)

    def test_bad_value_in_a_per_row_array_names_the_row(self) -> None:
        with pytest.raises(TokenSelectionError, match=r"u must be .* got 1\.5 at row 2"):
            TokenSelector().select_batch(
                np.zeros((3, 4), dtype=np.float32),
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                u=np.array([0.1, 0.2, 1.5]),
            )

    @pytest.mark.parametrize(
        ("row", "fragment"),
        [
            (np.array([0.0, np.nan, 1.0]), "logits row 0 contains NaN"),
            (np.array([0.0, np.inf]), "contains +inf"),
            (np.array([-np.inf, -np.inf]), "has no finite entry"),
        ],
    )
    def test_bad_logits(self, row: np.ndarray, fragment: str) -> None:
        with pytest.raises(TokenSelectionError, match="logits row 0") as info:
            select(row)
        assert fragment in str(info.value)

    def test_nan_in_a_long_row_is_found_by_the_chunked_head(self) -> None:
        logits = np.zeros((2, 10000), dtype=np.float32)
        logits[1, 9999] = np.nan  # in the trailing part outside the chunk grid
        with pytest.raises(TokenSelectionError, match="logits row 1 contains NaN"):
            TokenSelector().select_batch(logits, temperature=1.0, top_k=50, top_p=1.0, u=0.5)

    @pytest.mark.parametrize(
        ("logits", "fragment"),
        [
            (np.zeros(4, dtype=np.int64), "logits must have shape (rows, vocab)"),
            (np.zeros((2, 4), dtype=np.int32), "floating dtype"),
            (np.zeros((0, 4), dtype=np.float32), "at least one row"),
            ([[0.0, 1.0]], "numpy array or a torch tensor; got list"),
        ],
    )
    def test_bad_logits_arrays(self, logits: object, fragment: str) -> None:
        with pytest.raises(TokenSelectionError) as info:
            TokenSelector().select_batch(logits, temperature=1.0, top_k=0, top_p=1.0, u=0.5)  # type: ignore[arg-type]
        assert fragment in str(info.value)

    @pytest.mark.parametrize(
        ("params", "fragment"),
        [
            ({"top_k": 2.5}, "top_k must be an integer; got 2.5"),
            ({"top_k": True}, "top_k must be an integer; got True"),
            ({"top_k": np.array([1.0, 2.0])}, "top_k must hold integer numbers; got dtype float64"),
            ({"u": np.array([True, False])}, "u must hold real numbers; got dtype bool"),
            (
                {"u": np.array([0.5, 0.5, 0.5])},
                "u must be a scalar or have shape (2,); got shape (3,)",
            ),
            ({"temperature": "hot"}, "temperature must be a real number"),
        ],
    )
    def test_bad_parameter_types(self, params: dict[str, object], fragment: str) -> None:
        base: dict[str, object] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "u": 0.5}
        base.update(params)
        with pytest.raises(TokenSelectionError) as info:
            TokenSelector().select_batch(np.zeros((2, 3), dtype=np.float32), **base)  # type: ignore[arg-type]
        assert fragment in str(info.value)

    def test_single_row_needs_a_1d_array(self) -> None:
        with pytest.raises(TokenSelectionError, match=r"shape \(vocab,\)"):
            TokenSelector().select(np.zeros((1, 3)), temperature=1, top_k=0, top_p=1, u=0.5)

    @pytest.mark.parametrize("head_size", [0, -3, 2.5, True])
    def test_bad_head_size(self, head_size: object) -> None:
        with pytest.raises(TokenSelectionError, match="head_size must be a positive integer"):
            TokenSelector(head_size=head_size)  # type: ignore[arg-type]

    def test_validate_false_skips_value_checks_but_stays_in_range(self) -> None:
        logits = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype=np.float32)
        result = TokenSelector().select_batch(
            logits, temperature=1.0, top_k=0, top_p=1.0, u=np.array([0.5, 7.0]), validate=False
        )
        assert ((result.token_id >= 0) & (result.token_id < 3)).all()
