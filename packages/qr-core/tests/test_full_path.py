"""Small full-vocabulary CPU batches (qr_core._full): the same tokens as the general path.

``select_batch(..., validate=False)`` on a CPU tensor of at most `MAX_ROWS` rows with
every filter off takes the threshold heads and buckets of ``qr_core._full``;
``validate=True`` takes the general head path. Both must choose the same token for
the same u, except where u lies within float rounding of a cumulative boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qr_core import TokenSelector, _full
from qr_core._full import (
    MAX_ELEMENTS,
    MAX_FILTERED_ROWS,
    MAX_HEAD,
    MAX_ROWS,
    PreparedFull,
    full_batch,
    prepare_full,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

_OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def _both(x: torch.Tensor, temperature: object, u: torch.Tensor) -> tuple[object, object]:
    selector = TokenSelector()
    with torch.inference_mode():
        general = selector.select_batch(x, temperature=temperature, u=u, **_OFF)  # validates
        fast = selector.select_batch(x, temperature=temperature, u=u, validate=False, **_OFF)
    return general, fast


def _near_boundary(row: np.ndarray, temperature: float, u: float, token: int) -> bool:
    """Whether u·total lies within float rounding of the chosen token's cumulative edges."""
    order = np.lexsort((np.arange(row.size), -row.astype(np.float64)))
    z = np.exp((row[order].astype(np.float64) - row.max()) / temperature)
    cum = np.cumsum(z)
    target = u * cum[-1]
    edge = int(np.flatnonzero(order == token)[0])
    edges = np.array([cum[edge - 1] if edge else 0.0, cum[edge]])
    return bool(np.min(np.abs(edges - target)) <= 1e-6 * cum[-1])


def _same(
    x: torch.Tensor, temps: list[float], u: torch.Tensor, general: object, fast: object
) -> None:
    g_tok, f_tok = general.token_id.tolist(), fast.token_id.tolist()  # type: ignore[attr-defined]
    for i, (a, b) in enumerate(zip(g_tok, f_tok, strict=True)):
        if a != b:
            assert _near_boundary(x[i].numpy(), temps[i], float(u[i]), a), (i, a, b)
            continue
        assert fast.token_rank[i] == general.token_rank[i]  # type: ignore[attr-defined]
        np.testing.assert_allclose(
            float(fast.token_prob[i]),
            float(general.token_prob[i]),
            rtol=1e-5,  # type: ignore[attr-defined]
        )
    assert fast.num_candidates.tolist() == general.num_candidates.tolist()  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", ["heads", "buckets"])
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, MAX_ROWS),
    vocab=st.sampled_from([2, 50, 723, 4097, 6000, 32000, 70000]),
    scale=st.sampled_from([0.5, 3.0, 12.0]),
    temperature=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31 - 1),
    banned=st.integers(0, 50),
    u_edge=st.sampled_from([None, 1e-12, 1 - 1e-12]),
)
def test_the_fast_path_chooses_the_general_paths_token(  # noqa: PLR0917 - hypothesis
    route: str,
    rows: int,
    vocab: int,
    scale: float,
    temperature: float,
    seed: int,
    banned: int,
    u_edge: float | None,
) -> None:
    rows = min(rows, MAX_ELEMENTS // vocab)  # every draw takes the short path
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[:, 0] = x[:, -1]  # a tie: the lower id comes first
    x[0, 1 : 1 + min(banned, vocab - 2)] = float("-inf")
    u = torch.rand(rows, generator=gen, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    if u_edge is not None:
        u[0] = u_edge
    temps = torch.full((rows,), temperature, dtype=torch.float64)
    assert full_batch(x, {"temperature": temps, **_OFF}, None)
    with pytest.MonkeyPatch.context() as patch:
        if route == "buckets":  # no threshold head: every row is located by bucket mass
            patch.setattr(_full, "HEAD_SPANS", ())
        general, fast = _both(x, temps, u)
    _same(x, [temperature] * rows, u, general, fast)


class _GeneralRows:
    """Counts the rows `PreparedFull` hands to the general path."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        general = PreparedFull._general

        def counted(prepared: PreparedFull, xp: object, rows: torch.Tensor, u: object) -> object:
            self.rows += int(rows.numel())
            return general(prepared, xp, rows, u)  # type: ignore[arg-type]

        patch.setattr(PreparedFull, "_general", counted)


def test_rows_past_their_heads_are_located_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows as flat as N(0, 3²) logits at T = 0.7, whose u often falls past the widest
    head that fits, are decided by the host's buckets, never by the general path, with
    the general path's tokens."""
    spy = _GeneralRows(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    for vocab in (32000, 151936):
        x = torch.randn(1, vocab, generator=gen) * 3
        for u_value in np.linspace(0.0005, 0.9995, 120):
            u = torch.tensor([u_value], dtype=torch.float64)
            general, fast = _both(x, 0.7, u)
            _same(x, [0.7], u, general, fast)
    assert spy.rows == 0


@pytest.mark.parametrize(
    "params",
    [_OFF, {"top_k": 50, "top_p": 0.9, "min_p": 0.0}, {"top_k": 0, "top_p": 0.5, "min_p": 0.1}],
)
@pytest.mark.parametrize("bad", ["nan", "inf", "all -inf"])
def test_bad_logits_without_validation_give_an_in_range_token(
    params: dict[str, float], bad: str
) -> None:
    """``validate=False`` promises unspecified but in-range tokens for bad values, never
    an error: rows with NaN, +inf or no finite logit go to the general path."""
    x = torch.randn(3, 5000)
    if bad == "all -inf":
        x[1] = float("-inf")
    else:
        x[1, 7] = float(bad)
    u = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    with torch.inference_mode():
        result = TokenSelector().select_batch(x, temperature=0.7, u=u, validate=False, **params)
        good = TokenSelector().select_batch(x[[0, 2]], temperature=0.7, u=u[[0, 2]], **params)
    tokens = result.token_id.tolist()
    assert 0 <= tokens[1] < 5000
    assert [tokens[0], tokens[2]] == good.token_id.tolist()


def test_a_flat_row_goes_to_the_buckets_and_keeps_id_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every logit equal: each head is the whole row (wider than MAX_HEAD), so the row
    # is located by the host's buckets (one bucket holds it all); the canonical order
    # is the id order.
    spy = _GeneralRows(monkeypatch)
    x = torch.zeros(2, 32000)
    assert x.shape[1] > MAX_HEAD
    u = torch.tensor([0.25, 0.999_999], dtype=torch.float64)
    general, fast = _both(x, 1.0, u)
    assert fast.token_id.tolist() == [8000, 31999] == general.token_id.tolist()
    assert fast.token_rank.tolist() == [8000, 31999]
    np.testing.assert_allclose(fast.token_prob.numpy(), 1 / 32000)
    assert spy.rows == 0


def test_u_in_the_far_tail_sorts_the_row_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # One token holds all but ~2e-11 of the mass; the rest lie 35 below it (past the
    # buckets' span): a u beyond the top token's mass lands in the far tail, which
    # only the general path orders.
    spy = _GeneralRows(monkeypatch)
    x = torch.full((2, 32000), -35.0)
    x[:, 3] = 0.0
    x[1, 10] = -36.0
    u = torch.tensor([1 - 1e-13, 0.5], dtype=torch.float64)
    general, fast = _both(x, 1.0, u)
    assert fast.token_id.tolist() == general.token_id.tolist() == [31849, 3]
    assert fast.token_rank.tolist() == general.token_rank.tolist()
    assert spy.rows == 1


def test_what_the_fast_path_takes() -> None:
    x = torch.randn(2, 5000)
    values = {"temperature": 0.7, **_OFF}
    assert full_batch(x, values, None)
    assert full_batch(x, values, True)
    # Rows with a filter on are taken too, in small batches: their kept prefix
    # (qr_core._kept, its own tests); larger filtered batches take the general path.
    assert full_batch(x, {**values, "top_k": 50}, False)
    wide = torch.randn(MAX_FILTERED_ROWS + 1, 5000)
    assert full_batch(wide, values, None)
    assert full_batch(wide, values, True)
    assert not full_batch(wide, values, False)
    assert not full_batch(wide, {**values, "top_k": 50}, None)
    assert not full_batch(wide, {**values, "top_p": torch.full((9,), 0.9)}, None)
    assert not full_batch(wide, {**values, "min_p": np.full(9, 0.1)}, None)
    assert full_batch(torch.randn(1, MAX_ELEMENTS), {**values, "top_k": 50}, None)
    assert not full_batch(torch.randn(MAX_ROWS + 1, 5000), values, None)
    assert full_batch(torch.randn(2, 64), values, None)  # unless the compiled small path is on
    assert not full_batch(torch.randn(2, 1), values, None)
    assert not full_batch(x.numpy(), values, None)
    assert not full_batch(torch.randn(2, MAX_ELEMENTS // 2 + 1), values, None)
    assert isinstance(prepare_full(x, values), PreparedFull)
    # A greedy row: its top token, lowest id among ties.
    greedy = {**values, "temperature": torch.tensor([0.7, 0.0], dtype=torch.float64)}
    assert isinstance(prepare_full(x, greedy), PreparedFull)
    picked = TokenSelector().select_batch(
        x, temperature=greedy["temperature"], u=0.5, validate=False, **_OFF
    )
    assert int(picked.token_id[1]) == int(x[1].argmax())
    assert float(picked.token_prob[1]) == 1.0


def test_host_and_scalar_temperatures() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3000, generator=gen) * 3
    u = torch.rand(2, generator=gen, dtype=torch.float64)
    for temperature in (0.9, np.array([0.9, 1.3])):
        assert isinstance(prepare_full(x, {"temperature": temperature, **_OFF}), PreparedFull)
        general, fast = _both(x, temperature, u)
        temps = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (2,)).tolist()
        _same(x, temps, u, general, fast)


def test_bfloat16_and_float64_logits() -> None:
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(3, 8000, generator=gen) * 4
    u = torch.rand(3, generator=gen, dtype=torch.float64)
    for x in (base.to(torch.bfloat16), base.double()):
        general, fast = _both(x, 0.8, u)
        _same(x.float() if x.dtype == torch.bfloat16 else x, [0.8] * 3, u, general, fast)
