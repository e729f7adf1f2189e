"""The study statistics: Stouffer Z, the GCP χ² of segment Z², KS of u, effect size, permutation.

Pure functions of small arrays (per-trial sums, u values), so the same code
serves the analysis of a run and the null simulation that calibrates it.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "Alternative",
    "alternative_for",
    "chi2_segments",
    "ks_uniform",
    "mean_ci",
    "permutation_difference",
    "stouffer",
    "z_pvalue",
]

Alternative = Literal["greater", "less", "two-sided"]
FloatArray = npt.NDArray[np.float64]

#: Cells of one block of random splits (8 bytes each: 32 MiB).
_BLOCK_CELLS = 4 * 1024 * 1024


def alternative_for(sidedness: str, predicted: str) -> Alternative:
    """The alternative hypothesis of a test: the predicted direction, or two-sided."""
    if sidedness == "two-sided" or predicted == "none":
        return "two-sided"
    return "greater" if predicted == "positive" else "less"


def z_pvalue(z: float, alternative: Alternative) -> float:
    """p-value of a standard normal statistic."""
    if alternative == "greater":
        return float(stats.norm.sf(z))
    if alternative == "less":
        return float(stats.norm.cdf(z))
    return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


def stouffer(sum_z: float, n: int, alternative: Alternative) -> tuple[float, float]:
    """Stouffer's Z = Σz / √N of N token z-scores, and its p-value."""
    if n == 0:
        return math.nan, math.nan
    big_z = sum_z / math.sqrt(n)
    return big_z, z_pvalue(big_z, alternative)


def chi2_segments(segment_z: FloatArray) -> tuple[float, int, float]:
    """The GCP-style χ² = Σ Z² over segments (one degree of freedom each), df and p."""
    if len(segment_z) == 0:
        return math.nan, 0, math.nan
    chi2 = float(np.sum(np.square(segment_z)))
    df = len(segment_z)
    return chi2, df, float(stats.chi2.sf(chi2, df))


def ks_uniform(u: FloatArray) -> tuple[float, float]:
    """Kolmogorov-Smirnov of u against the uniform distribution on (0, 1): D and p.

    The same D and exact p-value as ``scipy.stats.kstest(u, "uniform")``, with
    one sort and no CDF evaluation (the uniform CDF is u itself, clipped).
    """
    n = len(u)
    if n == 0:
        return math.nan, math.nan
    x = np.clip(np.sort(u), 0.0, 1.0)
    d_plus = float(np.max(np.arange(1, n + 1) / n - x))
    d_minus = float(np.max(x - np.arange(0, n) / n))
    d = max(d_plus, d_minus)
    return d, float(np.clip(stats.kstwo.sf(d, n), 0.0, 1.0))


def mean_ci(total: float, total_sq: float, n: int, level: float = 0.95) -> dict[str, float]:
    """Mean z (the effect size in standard deviations of the null) and its normal CI."""
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan}
    mean = total / n
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else math.nan
    sd = math.sqrt(var) if n > 1 else math.nan
    half = float(stats.norm.ppf(0.5 + level / 2)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def permutation_difference(
    test: FloatArray,
    control: FloatArray,
    *,
    alternative: Alternative,
    n_resamples: int,
    rng: np.random.Generator,
) -> tuple[float, float, bool]:
    """Difference of means (test − control) of per-trial values and its permutation p-value.

    The trials' condition labels are permuted. Every split is enumerated when
    there are at most ``n_resamples`` of them (exact p); otherwise
    ``n_resamples`` random splits give p = (k + 1) / (n_resamples + 1).

    Returns:
        The observed difference, the p-value and whether it was exact.
    """
    pooled = np.concatenate([test, control]).astype(np.float64)
    n, k = len(pooled), len(test)
    observed = float(test.mean() - control.mean())
    total = pooled.sum()
    exact = math.comb(n, k) <= n_resamples
    if exact:
        masks = np.zeros((math.comb(n, k), n), dtype=bool)
        for row, chosen in enumerate(combinations(range(n), k)):
            masks[row, list(chosen)] = True
        sums = masks.astype(np.float64) @ pooled
    else:
        # Random splits in blocks (bounded memory): a shuffled 0/1 row selects the test trials.
        base = np.zeros(n, dtype=np.float64)
        base[:k] = 1.0
        block = max(1, _BLOCK_CELLS // n)
        sums = np.concatenate(
            [
                rng.permuted(np.tile(base, (min(block, n_resamples - i), 1)), axis=1) @ pooled
                for i in range(0, n_resamples, block)
            ]
        )
    null = sums / k - (total - sums) / (n - k)
    # A relative tolerance so that splits equal to the observed one count as equal.
    gamma = abs(observed) * np.finfo(np.float64).eps * 100
    adjust = 0 if exact else 1
    greater = (np.count_nonzero(null >= observed - gamma) + adjust) / (len(null) + adjust)
    less = (np.count_nonzero(null <= observed + gamma) + adjust) / (len(null) + adjust)
    if alternative == "greater":
        p = greater
    elif alternative == "less":
        p = less
    else:
        p = min(1.0, 2.0 * min(greater, less))
    return observed, float(p), exact
