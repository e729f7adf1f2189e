"""Shannon entropy, fixed and EDT temperature strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qr_core import (
    EDTTemperatureStrategy,
    FixedTemperatureStrategy,
    TemperatureResult,
    TemperatureStrategyError,
    TemperatureStrategyRegistry,
    compute_shannon_entropy,
)
from scipy import special, stats


def test_entropy_matches_scipy_and_ignores_minus_inf() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 50)) * 3
    logits[2, :40] = -np.inf
    got = compute_shannon_entropy(logits)
    for r in range(5):
        finite = logits[r][np.isfinite(logits[r])]
        assert math.isclose(got[r], stats.entropy(special.softmax(finite)), rel_tol=1e-12)


@pytest.mark.parametrize("block_elements", [1, 100, 250, 1 << 20])
def test_entropy_in_row_blocks_matches_one_pass(
    block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of rows (one row, several, a ragged last block, all) give the same entropies,
    and the reused scratch buffers carry nothing from one call or block into the next."""
    from qr_core import _array

    rng = np.random.default_rng(11)
    logits = rng.normal(size=(7, 50)) * 4
    logits[3, :45] = -np.inf
    logits[5, :] = -np.inf
    logits[5, 9] = 1.5  # one finite logit: entropy exactly 0
    expected = [stats.entropy(special.softmax(row[np.isfinite(row)])) for row in logits]
    monkeypatch.setattr(_array.Backend, "host_block_elements", block_elements)
    for _ in range(2):
        got = compute_shannon_entropy(logits)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        got32 = compute_shannon_entropy(logits.astype(np.float32))
        np.testing.assert_allclose(got32, expected, rtol=1e-5, atol=1e-6)


def test_entropy_known_values() -> None:
    assert math.isclose(
        compute_shannon_entropy(np.zeros(1000, dtype=np.float32)), math.log(1000), rel_tol=1e-6
    )
    assert compute_shannon_entropy(np.array([0.0, -np.inf, -np.inf])) == 0.0
    assert compute_shannon_entropy(np.array([500.0, -500.0])) == 0.0  # rounding never goes negative


@pytest.mark.parametrize(
    ("logits", "fragment"),
    [
        (np.array([0.0, np.nan]), "contains NaN"),
        (np.array([-np.inf]), "has no finite entry"),
        (np.zeros((2, 2, 2)), "must have shape (rows, vocab)"),
        (np.zeros(3, dtype=np.int8), "floating dtype"),
        ([0.0, 1.0], "got list"),
    ],
)
def test_entropy_bad_logits(logits: object, fragment: str) -> None:
    with pytest.raises(TemperatureStrategyError) as info:
        compute_shannon_entropy(logits)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_fixed_returns_its_temperature_and_the_entropy() -> None:
    logits = np.log(np.array([[0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]))
    batch = FixedTemperatureStrategy(0.4).compute_batch(logits)
    np.testing.assert_array_equal(batch.temperature, [0.4, 0.4])
    np.testing.assert_allclose(batch.shannon_entropy, [1.5 * math.log(2), math.log(3)])
    one = FixedTemperatureStrategy().compute_temperature(logits[1])
    assert one == TemperatureResult(temperature=0.7, shannon_entropy=pytest.approx(math.log(3)))


def test_edt_formula_and_clamps() -> None:
    logits = np.log(np.array([[0.5, 0.25, 0.25, 1e-300], [1.0, 1.0, 1.0, 1.0]]))
    logits[0, 3] = -np.inf  # V counts finite logits only: 3 here
    strategy = EDTTemperatureStrategy(
        edt_base_temp=1.0, edt_exponent=2.0, edt_min_temp=0.0, edt_max_temp=10.0
    )
    batch = strategy.compute_batch(logits)
    h = 1.5 * math.log(2)
    np.testing.assert_allclose(batch.temperature, [(h / math.log(3)) ** 2, 1.0])
    clamped = EDTTemperatureStrategy(
        edt_base_temp=5.0, edt_min_temp=0.5, edt_max_temp=2.0
    ).compute_batch(logits)
    np.testing.assert_allclose(clamped.temperature, [2.0, 2.0])
    single = EDTTemperatureStrategy().compute_temperature(np.array([3.0, -np.inf]))
    assert single.temperature == 0.1
    assert single.shannon_entropy == 0.0


def test_edt_accepts_a_precomputed_entropy() -> None:
    logits = np.zeros((2, 8))
    batch = EDTTemperatureStrategy(edt_min_temp=0.0).compute_batch(
        logits, shannon_entropy=np.array([0.0, math.log(8)])
    )
    np.testing.assert_allclose(batch.temperature, [0.0, 0.8])
    with pytest.raises(TemperatureStrategyError, match=r"shape \(2,\)"):
        EDTTemperatureStrategy().compute_batch(logits, shannon_entropy=np.zeros(3))


def test_edt_is_monotone_in_entropy() -> None:
    # Rows flatten step by step: entropy rises, so must the temperature.
    sharpness = np.linspace(8.0, 0.0, 40)
    logits = -sharpness[:, None] * np.arange(100)[None, :] / 10
    batch = EDTTemperatureStrategy(edt_min_temp=0.0, edt_max_temp=100.0).compute_batch(logits)
    assert np.all(np.diff(batch.shannon_entropy) > 0)
    assert np.all(np.diff(batch.temperature) > 0)
    assert stats.spearmanr(batch.shannon_entropy, batch.temperature).statistic == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: FixedTemperatureStrategy(-0.1), "fixed_temperature must be >= 0"),
        (lambda: FixedTemperatureStrategy(math.inf), "fixed_temperature must be a finite number"),
        (lambda: EDTTemperatureStrategy(edt_base_temp=0.0), "edt_base_temp must be > 0"),
        (lambda: EDTTemperatureStrategy(edt_exponent=-1.0), "edt_exponent must be >= 0"),
        (lambda: EDTTemperatureStrategy(edt_min_temp=3.0), "0 <= min <= max"),
    ],
)
def test_bad_parameters(factory: object, fragment: str) -> None:
    with pytest.raises(TemperatureStrategyError) as info:
        factory()  # type: ignore[operator]
    assert fragment in str(info.value)


def test_registry_builds_each_strategy_from_one_config() -> None:
    config = {"fixed_temperature": 0.3, "edt_base_temp": 1.1, "population_std": 70.0}
    fixed = TemperatureStrategyRegistry.build("fixed", **config)
    edt = TemperatureStrategyRegistry.build("edt", **config)
    assert isinstance(fixed, FixedTemperatureStrategy)
    assert fixed.fixed_temperature == 0.3
    assert isinstance(edt, EDTTemperatureStrategy)
    assert edt.edt_base_temp == 1.1
    assert "edt_base_temp=1.1" in repr(edt)
    assert "0.3" in repr(fixed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_entropy_is_the_block_entropy_bit_for_bit(dtype: type) -> None:
    """The shortcut for small host arrays (`_host_entropy`) does the same operations in
    the same dtype as the backend's `_entropy_block`: equal results, not merely close,
    with banned (-inf) tokens, one-hot rows and large logits."""
    from qr_core._array import Backend
    from qr_core.temperature import _entropy_block, _host_entropy

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 1000)) * rng.uniform(0.1, 40, (6, 1))).astype(dtype)
    x[1, rng.choice(1000, 400, replace=False)] = -np.inf
    x[2] = -np.inf
    x[2, 17] = 3.0  # one finite token: entropy 0
    x[3] += dtype(1e4)
    got = _host_entropy(x)
    want = _entropy_block(Backend(), x, np.empty_like(x), np.empty_like(x))
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)
    assert got[2] == 0
