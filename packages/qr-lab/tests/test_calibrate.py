"""The null-simulation calibration for every primary statistic, and the Monte Carlo permutation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qr_lab._calibrate import binomial_interval, calibrate
from qr_lab._stats import alternative_for, permutation_difference, stouffer, z_pvalue
from scipy import stats


@pytest.mark.parametrize("primary", ["stouffer_z", "chi2", "ks_u", "difference"])
def test_every_primary_statistic_is_calibrated_under_the_null(primary: str) -> None:
    spec = {"primary": primary, "condition": "a", "control": "b", "alpha": 0.05,
            "sidedness": "one-sided", "permutations": 500, "calibration_studies": 300}  # fmt: skip
    counts = {"a": [16] * 10, "b": [16] * 10}
    out = calibrate(spec, {"a": "positive", "b": "none"}, counts, seed=3)
    assert out["studies"] == 300
    assert out["calibrated"], out


def test_calibration_without_usable_trials_says_so() -> None:
    spec = {"primary": "difference", "condition": "a", "control": "b", "alpha": 0.05,
            "sidedness": "two-sided", "permutations": 500, "calibration_studies": 10}  # fmt: skip
    out = calibrate(spec, {"a": "none", "b": "none"}, {"a": [16], "b": []}, seed=1)
    assert out == {"studies": 0, "note": "no usable trials to simulate"}


def test_binomial_interval_edges() -> None:
    assert binomial_interval(0, 10)[0] == 0.0
    assert binomial_interval(10, 10)[1] == 1.0
    low, high = binomial_interval(20, 400)
    assert low < 0.05 < high


def test_monte_carlo_permutation_agrees_with_scipy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(0.3, 1, 20), rng.normal(0, 1, 20)  # C(40, 20) splits: not enumerable
    for alt in ("greater", "less", "two-sided"):
        diff, p, exact = permutation_difference(
            x, y, alternative=alt, n_resamples=20_000, rng=np.random.default_rng(5)
        )
        assert not exact
        ref = stats.permutation_test(
            (x, y), lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis), vectorized=True,
            n_resamples=20_000, alternative=alt, random_state=6,
        )  # fmt: skip
        assert diff == pytest.approx(ref.statistic)
        assert p == pytest.approx(ref.pvalue, abs=0.015)


def test_sidedness_and_empty_inputs() -> None:
    assert alternative_for("one-sided", "negative") == "less"
    assert alternative_for("one-sided", "none") == "two-sided"
    assert z_pvalue(-2.0, "less") == pytest.approx(stats.norm.cdf(-2.0))
    z, p = stouffer(0.0, 0, "greater")
    assert math.isnan(z)
    assert math.isnan(p)
