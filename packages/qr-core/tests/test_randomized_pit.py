"""randomized_pit: the byte-sum CDF against exact arithmetic, null law, monotonicity, bias."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qr_core import (
    PIT_EDGE,
    POPULATION_STD,
    V_BYTES,
    AmplifierRegistry,
    RandomizedPITAmplifier,
    SignalAmplificationError,
)
from qr_core._byte_sum import BYTE_SUM_EXACT_MAX_N, byte_sum_cdf
from scipy import stats

TOL = 1e-12


def exact_cdf_table(n: int) -> list[Fraction]:
    """F(s) for s = 0..255n exactly: the coefficients of (1 + x + ... + x**255)**n.

    Kronecker substitution: evaluate the polynomial at x = 2**b with b wider than any
    coefficient, raise the integer to the n-th power, and read the coefficients back.
    """
    b = 8 * n + 8
    g = sum(1 << (b * j) for j in range(256))
    big = g**n
    mask = (1 << b) - 1
    denom = 256**n
    out, acc = [], 0
    for s in range(255 * n + 1):
        acc += (big >> (b * s)) & mask
        out.append(Fraction(acc, denom))
    return out


def exact_cdf_point(n: int, s: int) -> Fraction:
    """F(s) exactly by inclusion-exclusion: sum_j (-1)^j C(n, j) C(s - 256 j + n, n) / 256^n."""
    total = 0
    for j in range(s // 256 + 1):
        term = math.comb(n, j) * math.comb(s - 256 * j + n, n)
        total += -term if j % 2 else term
    return Fraction(total, 256**n)


class TestByteSumCDF:
    @pytest.mark.parametrize("n", range(1, BYTE_SUM_EXACT_MAX_N + 1))
    def test_small_n_is_exact(self, n: int) -> None:
        exact = np.array([float(f) for f in exact_cdf_table(n)])
        table = byte_sum_cdf(n)
        np.testing.assert_array_equal(table.at(np.arange(255 * n + 1)), exact)

    @pytest.mark.parametrize("n", [7, 8, 16, 33])
    def test_fourier_tables_match_exact_convolution_everywhere(self, n: int) -> None:
        exact = np.array([float(f) for f in exact_cdf_table(n)])
        table = byte_sum_cdf(n)
        assert np.abs(table.at(np.arange(255 * n + 1)) - exact).max() < TOL

    @pytest.mark.parametrize(
        ("n", "quantiles"),
        [
            (100, (-8.0, -3.0, -0.4, 0.0, 1.5, 6.0)),
            (255, (-6.0, -1.0, 0.3, 4.0)),
            (1024, (-6.0, -1.0, 0.3, 2.5)),
            pytest.param(4096, (-6.0, 0.3), marks=pytest.mark.slow),
        ],
    )
    def test_fourier_tables_match_exact_values_up_to_4096(
        self, n: int, quantiles: tuple[float, ...]
    ) -> None:
        table = byte_sum_cdf(n)
        for q in quantiles:
            s = int(127.5 * n + q * POPULATION_STD * math.sqrt(n))
            exact = float(exact_cdf_point(n, s))
            assert abs(float(table.at(np.array([s]))[0]) - exact) < TOL, (n, q)

    @pytest.mark.parametrize(("a", "b"), [(10240, 10240), (4096, 20480), (3, 65533)])
    def test_large_n_agrees_with_the_convolution_of_two_smaller_tables(
        self, a: int, b: int
    ) -> None:
        # F_{a+b}(s) = sum_j P_a(j) F_b(s - j): all terms non-negative, so the sum is as
        # accurate as the two tables (each checked against exact values above or here).
        whole, left, right = byte_sum_cdf(a + b), byte_sum_cdf(a), byte_sum_cdf(b)
        p_left = np.diff(left.cdf)
        js = np.arange(left.lo, left.hi + 1)
        sd = POPULATION_STD * math.sqrt(a + b)
        for q in (-7.0, -3.0, -0.5, 0.0, 1.0, 4.0, 7.0):
            s = int(127.5 * (a + b) + q * sd)
            via = math.fsum(p_left * right.at(s - js))
            assert abs(via - float(whole.at(np.array([s]))[0])) < TOL, q

    def test_window_ends_carry_no_mass_and_the_table_is_monotone(self) -> None:
        for n in (1, 7, 1000, 20480):
            table = byte_sum_cdf(n)
            assert table.cdf[0] == 0.0
            assert table.cdf[-1] == pytest.approx(1.0, abs=TOL)
            assert (np.diff(table.cdf) >= 0).all()
            # Outside the window F is 0 or 1 (Hoeffding: the mass there is below 1e-28).
            assert table.at(np.array([table.lo - 2]))[0] == 0.0
            assert table.at(np.array([table.hi + 1]))[0] == 1.0

    def test_bad_n(self) -> None:
        with pytest.raises(ValueError, match="n must be >= 1"):
            byte_sum_cdf(0)


def _null_u(n: int, blocks: int, seed: int) -> np.ndarray:
    """u of ``blocks`` rows of n + 7 seeded PRNG bytes, through amplify_batch, in chunks."""
    amp = RandomizedPITAmplifier()
    bits = np.random.SFC64(seed)
    width = n + V_BYTES
    chunk = max(1, min(blocks, (1 << 27) // width))
    out = []
    done = 0
    while done < blocks:
        rows = min(chunk, blocks - done)
        words = -(-rows * width // 8)
        data = bits.random_raw(words).view(np.uint8)[: rows * width].reshape(rows, width)
        out.append(amp.amplify_batch(data).u)
        done += rows
    return np.concatenate(out)


@pytest.mark.parametrize(
    "n",
    [
        1,
        2,
        3,
        16,
        pytest.param(1024, marks=pytest.mark.slow),
        pytest.param(20480, marks=pytest.mark.slow),
    ],
)
def test_null_u_passes_ks_on_a_million_blocks(n: int) -> None:
    u = _null_u(n, 1_000_000, seed=1000 + n)
    assert stats.kstest(u, "uniform").pvalue > 0.001
    # The test has power: u without V's spread (S alone, a lattice of 256 steps) fails.
    if n == 1:
        assert stats.kstest(np.floor(u * 256) / 256, "uniform").pvalue < 1e-6


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 30000),
    v=st.floats(0.0, 1.0, exclude_max=True),
    offsets=st.lists(st.integers(-200_000, 200_000), min_size=2, max_size=8),
)
def test_u_is_non_decreasing_in_s_for_a_fixed_v(n: int, v: float, offsets: list[int]) -> None:
    centre = 255 * n // 2
    sums = np.clip(np.array(sorted(centre + o for o in offsets)), 0, 255 * n)
    u = RandomizedPITAmplifier.u_of_sums(sums, n, np.full(len(sums), v))
    assert (np.diff(u) >= 0).all()
    assert ((u >= PIT_EDGE) & (u <= 1 - PIT_EDGE)).all()


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(1, 64))
def test_raising_one_s_byte_never_lowers_u(data: st.DataObject, n: int) -> None:
    row = np.array(data.draw(st.lists(st.integers(0, 255), min_size=n + 7, max_size=n + 7)))
    i = data.draw(st.integers(0, n - 1))
    higher = row.copy()
    higher[i] = min(255, row[i] + data.draw(st.integers(1, 255)))
    amp = RandomizedPITAmplifier()
    block = np.stack([row, higher]).astype(np.uint8)
    u = amp.amplify_batch(block).u
    assert u[1] >= u[0]


def test_each_s_value_spreads_over_its_own_interval() -> None:
    amp = RandomizedPITAmplifier()
    # n = 1: S = b, F(S - 1) = b / 256, so u = (b + V) / 256 with V from the last 7 bytes.
    low_v = np.array([[5, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    high_v = np.array([[5, 255, 255, 255, 255, 255, 255, 255]], dtype=np.uint8)
    assert amp.amplify_batch(low_v).u[0] == pytest.approx((5 + 2.0**-54) / 256, rel=1e-15)
    assert amp.amplify_batch(high_v).u[0] == pytest.approx((5 + 1 - 2.0**-54) / 256, rel=1e-15)
    mid = np.array([[5, 128, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    assert amp.amplify_batch(mid).u[0] == pytest.approx(5.5 / 256 + 2.0**-54 / 256, rel=1e-15)


def test_z_score_and_mean_keep_their_meaning_and_the_result_names_its_bytes() -> None:
    rng = np.random.default_rng(3)
    block = rng.integers(0, 256, size=(4, 1024 + 7), dtype=np.uint8)
    new = AmplifierRegistry.build("randomized_pit").amplify_batch(block)
    old = AmplifierRegistry.build("zscore_mean").amplify_batch(block[:, :1024].copy())
    np.testing.assert_array_equal(new.z_score, old.z_score)
    np.testing.assert_array_equal(new.sample_mean, old.sample_mean)
    assert (new.amplifier, new.sample_count, new.s_bytes, new.v_bytes) == (
        "randomized_pit",
        1024,
        1024,
        7,
    )
    one = RandomizedPITAmplifier().amplify(block[0])
    assert (one.u, one.amplifier, one.s_bytes, one.v_bytes) == (new.u[0], "randomized_pit", 1024, 7)
    assert RandomizedPITAmplifier().row_bytes(1024) == 1031
    assert AmplifierRegistry.build("zscore_mean").row_bytes(1024) == 1024


def test_rows_too_short_for_v_are_refused() -> None:
    with pytest.raises(SignalAmplificationError, match="at least 8 bytes"):
        RandomizedPITAmplifier().amplify(bytes(7))
    with pytest.raises(SignalAmplificationError, match="population_std"):
        RandomizedPITAmplifier(population_std=0.0)


def test_a_mean_shift_moves_z_and_u_as_theory_says() -> None:
    mock = pytest.importorskip("qr_entropy.sources._mock")
    n, rows, delta = 1024, 20_000, 0.5
    source = mock.MockUniformSource(seed=11, mean_shift=delta)
    width = n + V_BYTES
    block = np.frombuffer(source.get_random_bytes(rows * width), dtype=np.uint8)
    result = RandomizedPITAmplifier().amplify_batch(block.reshape(rows, width))
    # z: mean delta sqrt(n) / sigma; its variance is the tilted byte variance over sigma^2.
    pmf = mock.tilted_byte_distribution(delta)
    values = np.arange(256.0)
    byte_var = float(pmf @ values**2 - (pmf @ values) ** 2)
    z_se = math.sqrt(byte_var) / POPULATION_STD / math.sqrt(rows)
    assert abs(result.z_score.mean() - delta * math.sqrt(n) / POPULATION_STD) < 4 * z_se
    # u: S's law is the null law tilted by exp(theta S); V's mean follows from the tilted bytes.
    theta = math.log(pmf[1] / pmf[0])
    table = byte_sum_cdf(n)
    s = np.arange(table.lo, table.hi + 1)
    p_null = np.diff(table.cdf)
    weights = p_null * np.exp(theta * (s - 127.5 * n))
    p_tilted = weights / weights.sum()
    mean_byte = float(pmf @ values)
    low3 = float(pmf @ (values % 8))
    bits56_mean = mean_byte * sum(256.0**j for j in range(7))
    v_mean = ((bits56_mean - low3) / 8 + 0.5) / 2.0**53
    u_theory = float(p_tilted @ (table.cdf[:-1] + p_null * v_mean))
    u_se = result.u.std(ddof=1) / math.sqrt(rows)
    assert abs(result.u.mean() - u_theory) < 4 * u_se
    assert u_theory - 0.5 > 20 * u_se  # the shift is real and resolved
