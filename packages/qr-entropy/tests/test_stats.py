"""The battery's scipy-free p-values, cross-checked against scipy.stats."""

from __future__ import annotations

import numpy as np
import pytest
from qr_entropy._stats import (
    BYTE_STD,
    chi2_sf,
    kolmogorov_sf,
    ks_uniform,
    normal_cdf,
    normal_two_sided_p,
)
from scipy import stats


def test_byte_std_is_the_discrete_value() -> None:
    assert pytest.approx(73.90027063, abs=1e-8) == BYTE_STD


@pytest.mark.parametrize("dof", [1, 2, 5, 30, 255])
@pytest.mark.parametrize("quantile", [1e-9, 0.001, 0.2, 0.5, 0.9, 0.999, 1 - 1e-9])
def test_chi2_sf_matches_scipy(dof: int, quantile: float) -> None:
    statistic = stats.chi2.ppf(quantile, dof)
    assert chi2_sf(statistic, dof) == pytest.approx(stats.chi2.sf(statistic, dof), rel=1e-8)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 10) == 1.0
    assert chi2_sf(-1.0, 10) == 1.0
    assert chi2_sf(1e4, 255) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("n", [35, 100, 1000, 10000])
@pytest.mark.parametrize("p", [0.001, 0.01, 0.1, 0.5, 0.9])
def test_kolmogorov_sf_close_to_scipy(n: int, p: float) -> None:
    statistic = stats.kstwo.isf(p, n)
    assert kolmogorov_sf(statistic, n) == pytest.approx(p, abs=0.01, rel=0.05)


def test_kolmogorov_sf_small_statistic() -> None:
    assert kolmogorov_sf(0.001, 100) == 1.0


def test_ks_uniform_statistic_matches_scipy() -> None:
    values = np.random.default_rng(4).random(500)
    statistic, p_value = ks_uniform(values)
    reference = stats.kstest(values, "uniform")
    assert statistic == pytest.approx(reference.statistic, abs=1e-12)
    assert p_value == pytest.approx(reference.pvalue, abs=0.01)


def test_normal_helpers_match_scipy() -> None:
    for z in (-5.0, -1.0, 0.0, 0.3, 2.5):
        assert normal_cdf(z) == pytest.approx(stats.norm.cdf(z), rel=1e-12)
        assert normal_two_sided_p(z) == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)
