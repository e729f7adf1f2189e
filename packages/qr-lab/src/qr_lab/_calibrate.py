"""The built-in calibration: the primary test on simulated null studies of the same design.

Each simulated study has the run's conditions and per-trial token counts, with
token z-scores drawn standard normal (the null hypothesis of the z-score
amplifier) and u uniform; the share of studies whose primary test rejects is
the type-I error at α, reported with its binomial 99% interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from qr_lab._stats import (
    alternative_for,
    chi2_segments,
    ks_uniform,
    permutation_difference,
    stouffer,
)

__all__ = ["binomial_interval", "calibrate"]

#: Tokens simulated per KS test at most: under the null its p-value is uniform whatever n.
_KS_TOKENS = 20_000
#: Permutations per simulated study (Monte Carlo p keeps its level at any count).
_CAL_PERMUTATIONS = 999


def binomial_interval(k: int, n: int, level: float = 0.99) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion."""
    a = 1 - level
    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def _one(
    spec: dict[str, Any],
    predicted: dict[str, str],
    counts: dict[str, list[int]],
    rng: np.random.Generator,
) -> float:
    name, cond = spec["primary"], spec["condition"]
    alt = alternative_for(spec["sidedness"], predicted[cond])
    n_t = np.asarray(counts[cond], dtype=np.float64)
    if name == "stouffer_z":
        sums = rng.standard_normal(len(n_t)) * np.sqrt(n_t)
        return stouffer(float(sums.sum()), int(n_t.sum()), alt)[1]
    if name == "chi2":
        return chi2_segments(rng.standard_normal(len(n_t)))[2]
    if name == "ks_u":
        return ks_uniform(rng.random(int(min(n_t.sum(), _KS_TOKENS))))[1]
    other = np.asarray(counts[spec["control"]], dtype=np.float64)
    test = rng.standard_normal(len(n_t)) / np.sqrt(n_t)
    control = rng.standard_normal(len(other)) / np.sqrt(other)
    n = min(int(spec["permutations"]), _CAL_PERMUTATIONS)
    return permutation_difference(test, control, alternative=alt, n_resamples=n, rng=rng)[1]


def calibrate(
    spec: dict[str, Any], predicted: dict[str, str], counts: dict[str, list[int]], seed: int
) -> dict[str, Any]:
    """Type-I error of the primary test at α over ``spec['calibration_studies']`` null studies."""
    studies = int(spec["calibration_studies"])
    alpha = float(spec["alpha"])
    needed = [spec["condition"]] + ([spec["control"]] if spec["primary"] == "difference" else [])
    if any(not counts.get(c) for c in needed):
        return {"studies": 0, "note": "no usable trials to simulate"}
    rng = np.random.default_rng([seed, 0x5EED])
    pvalues = np.array([_one(spec, predicted, counts, rng) for _ in range(studies)])
    k = int(np.count_nonzero(pvalues < alpha))
    low, high = binomial_interval(k, studies)
    return {
        "studies": studies,
        "alpha": alpha,
        "rejections": k,
        "type_i_error": k / studies,
        "interval_99": [low, high],
        "calibrated": bool(low <= alpha <= high) and not math.isnan(k / studies),
    }
