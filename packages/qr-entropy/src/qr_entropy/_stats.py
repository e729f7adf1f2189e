"""p-values for the ``qr-entropy check`` battery, in plain Python and numpy.

qr-entropy must not depend on scipy, so the few distributions the battery
needs are computed here; the tests cross-check each against scipy.stats.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "BYTE_MEAN",
    "BYTE_STD",
    "chi2_sf",
    "kolmogorov_sf",
    "ks_uniform",
    "normal_cdf",
    "normal_two_sided_p",
    "zscore",
    "zscore_u",
]

# These constants and zscore mirror qr_core's `zscore_mean` amplifier, so the battery
# judges the u a token would get. qr_entropy may not import qr_core (it stands alone
# for QRNG users who install only this package), so the few lines are repeated here,
# and tests-cross/test_zscore_pin.py holds them equal to the amplifier's output.
# σ is the exact discrete value: see ARCHITECTURE.md, design note "The null σ".
BYTE_MEAN = 127.5
BYTE_STD = math.sqrt((256**2 - 1) / 12)
#: u is kept in [ε, 1 − ε], as the amplifier keeps it.
UNIFORM_CLAMP_EPSILON = 1e-10

_GAMMA_EPS = 1e-15
_GAMMA_MAX_ITER = 10_000
_TINY = 1e-300


def normal_cdf(z: float) -> float:
    """Φ(z), the standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def zscore(
    block: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """z of each row's byte mean, z = (mean - 127.5) / (σ / sqrt(n)), and u = Φ(z).

    Args:
        block: (rows, n) uint8 array with n >= 1.

    Returns:
        (z, u): (rows,) float64 arrays; u is clamped to [ε, 1 − ε].
    """
    n = block.shape[1]
    # The mean of integers accumulates in float64 exactly (every partial sum < 2**53).
    z: npt.NDArray[np.float64] = (block.mean(axis=1) - BYTE_MEAN) / (BYTE_STD / math.sqrt(n))
    # Φ(z) = erfc(−z / √2) / 2 keeps full relative precision in the lower tail.
    u = 0.5 * np.array([math.erfc(-value / math.sqrt(2.0)) for value in z], dtype=np.float64)
    return z, np.clip(u, UNIFORM_CLAMP_EPSILON, 1.0 - UNIFORM_CLAMP_EPSILON)


def zscore_u(block: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """u of each row of a (rows, n) uint8 block (see `zscore`)."""
    return zscore(block)[1]


def _lower_gamma_series(a: float, x: float) -> float:
    # P(a, x) by its power series; converges fast for x < a + 1 (Numerical Recipes 6.2).
    term = total = 1.0 / a
    denominator = a
    for _ in range(_GAMMA_MAX_ITER):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _GAMMA_EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_gamma_fraction(a: float, x: float) -> float:
    # Q(a, x) by its continued fraction (modified Lentz); converges for x >= a + 1.
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _GAMMA_MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _GAMMA_EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution: Q(dof / 2, statistic / 2).

    Args:
        statistic: The chi-square statistic, >= 0.
        dof: Degrees of freedom, >= 1.
    """
    if statistic <= 0.0:
        return 1.0
    a, x = dof / 2.0, statistic / 2.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_gamma_series(a, x))
    return min(1.0, _upper_gamma_fraction(a, x))


def kolmogorov_sf(statistic: float, n: int) -> float:
    """P(D_n >= statistic) for the one-sample KS statistic, asymptotic with Stephens' correction.

    Uses Q_KS(λ) = 2 Σ (-1)^(j-1) exp(-2 j² λ²) at λ = (√n + 0.12 + 0.11/√n) D,
    accurate to about 0.01 in p for n >= 35 (Numerical Recipes 14.3).
    """
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:  # the series converges slowly here and the value is 1 to 1e-10
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1.0) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-16:
            break
    return min(1.0, max(0.0, total))


def ks_uniform(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    """KS test of ``values`` against Uniform(0, 1): returns (D, p)."""
    x = np.sort(values)
    n = int(x.size)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    d_plus = float(np.max(ranks / n - x))
    d_minus = float(np.max(x - (ranks - 1) / n))
    statistic = max(d_plus, d_minus)
    return statistic, kolmogorov_sf(statistic, n)
