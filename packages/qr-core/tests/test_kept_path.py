"""Filtered rows of small CPU batches (qr_core._kept): the same tokens as the general path.

``select_batch(..., validate=False)`` on a CPU tensor of at most `MAX_ROWS` rows
decides each row with a filter on from its kept prefix (``qr_core._kept``);
``validate=True`` takes the general head path. Both must choose the same token,
rank, probability and candidate count for the same u, except where u or the
top-p cut lies within float rounding of a cumulative boundary (long rows with
top-p alone take the row's mass from single-precision weights, as the general
path's tail does).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qr_core import TokenSelector
from qr_core._full import (
    FILTERED_ELEMENTS,
    MAX_FILTERED_ROWS,
    PreparedFull,
    full_batch,
    prepare_full,
)
from qr_core._kept import SORT_VOCAB, Kept

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _reference(row: np.ndarray, params: tuple[float, int, float, float], u: float) -> int:
    """The token by the documented rules, from a whole sort in float64 (ties: lower id)."""
    t, k, p, m = params
    finite = np.flatnonzero(row > -np.inf)
    order = finite[np.lexsort((finite, -row[finite].astype(np.float64)))]
    values = row[order].astype(np.float64)
    if t <= 0:
        return int(order[0])
    z = np.exp((values - values[0]) / t)
    kept = z.size
    if m > 0:
        kept = min(kept, int(np.count_nonzero(z >= m)))
    if 0 < k < z.size:
        kept = min(kept, int(np.count_nonzero(values >= values[k - 1])))
    cum = np.cumsum(z[:kept])
    if p < 1:
        kept = 1 + int(np.count_nonzero(cum[:-1] / cum[-1] < p))
        cum = cum[:kept]
    index = min(int(np.searchsorted(cum, u * cum[-1], side="right")), kept - 1)
    return int(order[index])


def _near(row: np.ndarray, params: tuple[float, int, float, float], u: float) -> set[int]:
    """The tokens the rules give when u and p move by float rounding (1e-6)."""
    t, k, p, m = params
    return {
        _reference(row, (t, k, min(pp, 1.0), m), min(max(uu, 0.0), 1 - 1e-16))
        for uu in (u * (1 - 1e-6), u, u * (1 + 1e-6))
        for pp in ((p,) if p >= 1 else (p * (1 - 1e-6), p, p * (1 + 1e-6)))
    }


def _params(rows: int, k: int, p: float, m: float, t: torch.Tensor) -> dict[str, object]:
    return {
        "temperature": t,
        "top_k": torch.full((rows,), k),
        "top_p": torch.full((rows,), p, dtype=torch.float64),
        "min_p": torch.full((rows,), m, dtype=torch.float64),
    }


def _check(x: torch.Tensor, params: dict[str, object], u: torch.Tensor) -> None:
    selector = TokenSelector()
    with torch.inference_mode():
        general = selector.select_batch(x, u=u, **params)  # type: ignore[arg-type]
        fast = selector.select_batch(x, u=u, validate=False, **params)  # type: ignore[arg-type]
    host = {name: torch.as_tensor(v).expand(x.shape[0]).tolist() for name, v in params.items()}
    for i, (a, b) in enumerate(zip(general.token_id.tolist(), fast.token_id.tolist(), strict=True)):
        if a != b:
            row = x[i].float().numpy()
            args = (host["temperature"][i], host["top_k"][i], host["top_p"][i], host["min_p"][i])
            assert {a, b} <= _near(row, args, float(u[i])), (i, a, b)
            continue
        assert int(fast.token_rank[i]) == int(general.token_rank[i])
        assert int(fast.num_candidates[i]) == int(general.num_candidates[i])
        k, p, m = host["top_k"][i], host["top_p"][i], host["min_p"][i]
        # The kept prefix is summed as the general path does (float64 over the same
        # tokens), except where the whole row's mass is needed: every filter off, or
        # top-p alone on a long row (single-precision weights).
        whole = m <= 0 and not 0 < k < x.shape[1] and (p >= 1 or x.shape[1] > SORT_VOCAB)
        rtol = 1e-5 if whole else 1e-9
        np.testing.assert_allclose(float(fast.token_prob[i]), float(general.token_prob[i]), rtol)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, MAX_FILTERED_ROWS),
    vocab=st.sampled_from([2, 3, 50, 723, 4097, 9000, 32000, 70000]),
    scale=st.sampled_from([0.5, 3.0, 12.0]),
    temperature=st.floats(0.05, 3.0),
    top_k=st.sampled_from([0, -1, 1, 5, 50, 4000, 10**6]),
    top_p=st.sampled_from([1.0, 0.999, 0.9, 0.3]),
    min_p=st.sampled_from([0.0, 0.0, 0.01, 0.3]),
    seed=st.integers(0, 2**31 - 1),
    banned=st.integers(0, 50),
    greedy=st.booleans(),
)
def test_filtered_rows_choose_the_general_paths_token(  # noqa: PLR0917 - hypothesis
    rows: int,
    vocab: int,
    scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    seed: int,
    banned: int,
    greedy: bool,
) -> None:
    rows = max(1, min(rows, FILTERED_ELEMENTS // vocab))  # every draw takes the short path
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[:, 0] = x[:, -1]  # a tie: the lower id comes first
    if vocab > 20:
        x[-1, 7:20] = x[-1, 3]  # a run of ties, often across the k-th value for small k
    x[0, 1 : 1 + min(banned, vocab - 2)] = float("-inf")
    u = torch.rand(rows, generator=gen, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    t = torch.full((rows,), temperature, dtype=torch.float64)
    if greedy:
        t[0] = 0.0
    assert full_batch(x, _params(rows, top_k, top_p, min_p, t), None)
    _check(x, _params(rows, top_k, top_p, min_p, t), u)


def test_common_filters_take_the_kept_prefix() -> None:
    # Model-like rows (a peaked head over a long tail) with the plugin's defaults and
    # with min-p: every row is decided on the host, none by the general path.
    gen = torch.Generator().manual_seed(1)
    for vocab in (723, SORT_VOCAB + 1, 151936 // 4):
        x = torch.randn(4, vocab, generator=gen) * 3
        t = torch.full((4,), 0.7, dtype=torch.float64)
        for k, p, m in ((50, 0.9, 0.0), (0, 1.0, 0.05), (20, 1.0, 0.0), (0, 0.95, 0.0)):
            prepared = prepare_full(x, _params(4, k, p, m, t))
            assert isinstance(prepared, PreparedFull)
            assert all(isinstance(state, Kept) for state in prepared._rows), (vocab, k, p, m)
            _check(x, _params(4, k, p, m, t), torch.rand(4, generator=gen, dtype=torch.float64))


def test_ties_across_the_kth_value_are_kept_whole() -> None:
    # Long rows find the k-th value by a partial selection of k + 1: a tie there
    # means every tied logit is kept, so the candidates are read again whole.
    x = torch.zeros(2, SORT_VOCAB * 2)
    x[:, 100:110] = 5.0
    x[:, 2000:2010] = 4.0  # k = 15 ends inside these ten ties: all ten are kept
    t = torch.full((2,), 1.0, dtype=torch.float64)
    u = torch.tensor([0.2, 1 - 1e-12], dtype=torch.float64)
    params = _params(2, 15, 1.0, 0.0, t)
    prepared = prepare_full(x, params)
    assert isinstance(prepared, PreparedFull)
    assert [state.ids.size for state in prepared._rows] == [20, 20]  # type: ignore[union-attr]
    _check(x, params, u)
    fast = TokenSelector().select_batch(x, u=u, validate=False, **params)  # type: ignore[arg-type]
    assert fast.num_candidates.tolist() == [20, 20]
    assert int(fast.token_id[1]) == 2009  # the last of the ties, by id


def test_rows_the_host_does_not_decide() -> None:
    # Non-finite rows, parameters on an accelerator-like path, and flat rows whose
    # candidates exceed the head limit are left to the general path.
    x = torch.randn(3, 600)
    x[1] = float("-inf")
    x[2, 5] = float("nan")
    t = torch.full((3,), 0.7, dtype=torch.float64)
    prepared = prepare_full(x, _params(3, 50, 0.9, 0.0, t))
    assert isinstance(prepared, PreparedFull)
    assert isinstance(prepared._rows[0], Kept)
    assert prepared._rows[1] is None
    assert prepared._rows[2] is None
    flat = torch.zeros(1, 40000)
    flat_params = _params(1, 0, 1.0, 0.01, torch.ones(1, dtype=torch.float64))
    prepared = prepare_full(flat, flat_params)
    assert isinstance(prepared, PreparedFull)
    assert prepared._rows == [None]
    _check(flat, flat_params, torch.tensor([0.5], dtype=torch.float64))


def test_greedy_rows_pick_the_top_token_lowest_id_first() -> None:
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, -1.0, 4.0, 4.0]])
    params = _params(2, 50, 0.9, 0.0, torch.zeros(2, dtype=torch.float64))
    fast = TokenSelector().select_batch(x, u=0.5, validate=False, **params)  # type: ignore[arg-type]
    assert fast.token_id.tolist() == [1, 2]
    assert fast.token_prob.tolist() == [1.0, 1.0]
    assert fast.num_candidates.tolist() == [1, 1]


def test_many_ties_follow_the_id_order() -> None:
    # Hundreds of equal logits: their order is the ids' (a stable sort of ids ascending).
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 700, generator=gen) < 0.5).float() * 2.0
    t = torch.ones(1, dtype=torch.float64)
    for k, p in ((600, 1.0), (0, 0.6), (450, 0.9)):
        params = _params(1, k, p, 0.0, t)
        for u in (0.1, 0.37, 0.8, 0.999):
            fast = TokenSelector().select_batch(x, u=u, validate=False, **params)  # type: ignore[arg-type]
            assert int(fast.token_id[0]) == _reference(x[0].numpy(), (1.0, k, p, 0.0), u)


def test_u_on_a_cumulative_edge_takes_the_next_token() -> None:
    # Two equal weights, u = 1/2 exactly: the mass up to the first is not above u·total,
    # so the second is chosen (the first token whose cumulative mass exceeds u).
    x = torch.tensor([[0.0, 0.0, -50.0, -60.0]])
    params = _params(1, 2, 1.0, 0.0, torch.ones(1, dtype=torch.float64))
    fast = TokenSelector().select_batch(x, u=0.5, validate=False, **params)  # type: ignore[arg-type]
    general = TokenSelector().select_batch(x, u=0.5, **params)  # type: ignore[arg-type]
    assert int(fast.token_id[0]) == int(general.token_id[0]) == 1


def test_top_k_of_long_rows_reads_the_tail_past_the_last_chunk() -> None:
    # A long row's top-k comes from its chunk maxima, and the logits past the last
    # whole chunk are read on their own: here they hold the largest values.
    from qr_core._kept import CHUNK

    vocab = SORT_VOCAB * 4 + CHUNK // 2 + 3  # a partial chunk at the end
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, vocab, generator=gen)
    x[0, -5:] = torch.tensor([9.0, 8.0, 8.0, 7.5, 7.0])
    x[0, CHUNK - 1] = 8.5  # the last logit of the first chunk
    t = torch.ones(1, dtype=torch.float64)
    for k in (1, 3, 4, 6):
        params = _params(1, k, 1.0, 0.0, t)
        prepared = prepare_full(x, params)
        assert isinstance(prepared, PreparedFull)
        state = prepared._rows[0]
        assert isinstance(state, Kept)
        expected = np.flatnonzero(x[0].numpy() >= np.sort(x[0].numpy())[-k])
        assert sorted(state.ids.tolist()) == expected.tolist(), k
        _check(x, params, torch.tensor([0.7], dtype=torch.float64))


def test_a_token_exactly_at_min_p_is_kept() -> None:
    """A weight exactly min-p is kept (``z >= min_p``): the candidates' threshold in
    logits, ``top + T·ln(min_p)``, rounds either way, and its margin must still hold
    the token, in a batch of two rows and in each row alone."""
    t = 0.5
    min_p = float(np.exp(np.float64(-2.0) / t))  # the weight of a logit 2 below the top
    x = torch.tensor([[0.0, -2.0, -2.5, -9.0, -9.5], [1.0, -1.0, -2.0, -8.0, -9.0]])
    params = {
        "temperature": torch.full((2,), t, dtype=torch.float64),
        "top_k": torch.full((2,), 4),
        "top_p": torch.ones(2, dtype=torch.float64),
        "min_p": torch.full((2,), min_p, dtype=torch.float64),
    }
    u = torch.tensor([0.999, 0.999], dtype=torch.float64)
    both = TokenSelector().select_batch(x, u=u, validate=False, **params)  # type: ignore[arg-type]
    assert both.num_candidates.tolist() == [2, 2]
    assert both.token_id.tolist() == [1, 1]
    for r in range(2):
        one = {k: v[r : r + 1] for k, v in params.items()}
        alone = TokenSelector().select_batch(x[r : r + 1], u=u[r : r + 1], validate=False, **one)  # type: ignore[arg-type]
        assert alone.num_candidates.tolist() == [2]
    _check(x, params, u)
