"""The null law of a byte sum: the CDF F of S = X_1 + ... + X_n for iid uniform bytes 0..255.

`byte_sum_cdf(n)` returns a cached table of F, exact or within 1e-12 absolute
at every n (see ARCHITECTURE.md, design note "Byte-sum CDF"):

- n <= 6: exact. The counts of each sum are integers below 256**6 = 2**48, so
  float64 convolution of them is exact, and F is their running sum over
  256**n, correctly rounded.
- n > 6: the characteristic function of S is known in closed form,
  ``E[exp(-i w S)] = (exp(-i w 127.5) sin(128 w) / (256 sin(w / 2)))**n``,
  so the probabilities on a window of sums are one inverse real FFT of its
  values (computed with exact integer phase reduction), and F is their
  running sum in blocks (rounding error at most about (B + N / B) ulp for N
  sums in blocks of B, about 2e-13 here). The window is the mean plus or
  minus 20 standard deviations: by Hoeffding's inequality the mass outside
  it is below 2 exp(-67) < 1e-28, so F is 0 below it and 1 above it within
  that, and aliasing of the FFT is below it too.

F is non-decreasing in the table by construction (a running sum of
non-negative terms, capped at 1), which keeps the randomized PIT monotone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = ["BYTE_SUM_EXACT_MAX_N", "ByteSumCDF", "byte_sum_cdf"]

#: Largest n whose table is exact: 256**n must stay below 2**53.
BYTE_SUM_EXACT_MAX_N = 6
#: Standard deviation of one uniform byte, sqrt((256**2 - 1) / 12).
_BYTE_STD = math.sqrt((256**2 - 1) / 12)
#: Half-width of the window, in standard deviations of S.
_WINDOW_SIGMAS = 20.0
#: Block length of the two-level running sum.
_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class ByteSumCDF:
    """F(s) = P(S <= s) for the sum S of n uniform bytes, on the window ``lo..hi``.

    Attributes:
        n: Number of bytes summed.
        lo: Smallest sum in the window.
        hi: Largest sum in the window.
        cdf: float64 array of length ``hi - lo + 2``: ``cdf[i] = F(lo - 1 + i)``,
            so ``cdf[0] = F(lo - 1)`` and ``cdf[-1] = F(hi)``.
    """

    n: int
    lo: int
    hi: int
    cdf: npt.NDArray[np.float64]

    def below_and_at(
        self, s: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(F(s - 1), F(s))`` for each sum; sums outside the window use its end.

        Args:
            s: Integer sums.

        Returns:
            Two float64 arrays shaped like ``s``.
        """
        i = np.minimum(np.maximum(s - self.lo, 0), self.hi - self.lo)  # np.clip, in fewer calls
        return self.cdf[i], self.cdf[i + 1]

    def at(self, s: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """F(s) for each integer s (0 below the window, 1 above it)."""
        i = np.clip(s - self.lo + 1, 0, self.hi - self.lo + 1)
        out = self.cdf[i]
        return np.where(s < self.lo - 1, 0.0, np.where(s >= self.hi, 1.0, out))


@lru_cache(maxsize=16)
def byte_sum_cdf(n: int) -> ByteSumCDF:
    """The (cached) CDF table of the sum of ``n`` uniform bytes.

    Args:
        n: Number of bytes, >= 1.

    Returns:
        The table; see the module docstring for its accuracy.

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        msg = f"n must be >= 1; got {n!r}"
        raise ValueError(msg)
    if n <= BYTE_SUM_EXACT_MAX_N:
        return _exact(n)
    return _fourier(n)


def _exact(n: int) -> ByteSumCDF:
    counts = np.ones(256)
    box = np.ones(256)
    for _ in range(n - 1):
        counts = np.convolve(counts, box)  # integers below 2**48: exact in float64
    cum = np.cumsum(counts)  # integers below 2**48: exact
    cdf = np.concatenate([[0.0], cum / float(256**n)])
    cdf[-1] = 1.0
    return ByteSumCDF(n=n, lo=0, hi=255 * n, cdf=cdf)


def _fourier(n: int) -> ByteSumCDF:
    half = _WINDOW_SIGMAS * _BYTE_STD * math.sqrt(n)
    mean2 = 255 * n  # twice the mean, an integer
    lo = max(0, math.floor(mean2 / 2 - half))
    hi = min(255 * n, math.ceil(mean2 / 2 + half))
    width = hi - lo + 1
    size = _fast_size(width)
    k = np.arange(size // 2 + 1, dtype=np.int64)
    # Angles as exact fractions of a turn: w = 2 pi k / size.
    two_n = 2 * size
    w_half = np.pi * k / size  # w / 2, exact enough: only its sine is used away from zero
    sin128 = np.sin(2 * np.pi * ((128 * k) % size) / size)  # sin(128 w), reduced exactly
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(k == 0, 1.0, sin128 / (256.0 * np.sin(w_half)))
        log_abs = n * np.log(np.abs(ratio))
    magnitude = np.exp(log_abs)
    negative = (ratio < 0) & (n % 2 == 1)
    magnitude = np.where(negative, -magnitude, magnitude)
    # Phase of the shift to the window, reduced exactly in integers:
    # w (lo - 127.5 n) = pi ((2 lo - 255 n) k mod 2 size) / size.
    turns = ((2 * lo - mean2) * k) % two_n
    phase = np.pi * turns.astype(np.float64) / size
    spectrum = magnitude * np.exp(1j * phase)
    # Rounding noise of about 1e-19 is left in: it is zero-mean, so its running sum
    # stays near 1e-16, whereas clipping each entry at 0 would add up its positive half.
    pmf = np.fft.irfft(spectrum, n=size)[:width]
    cdf = np.concatenate([[0.0], _blocked_cumsum(pmf)])
    np.clip(cdf, 0.0, 1.0, out=cdf)
    if hi == 255 * n:
        cdf[-1] = 1.0
    return ByteSumCDF(n=n, lo=lo, hi=hi, cdf=cdf)


def _blocked_cumsum(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Running sum in blocks: the error grows with the block length plus the block count."""
    m = len(x)
    pad = (-m) % _BLOCK
    blocks = np.concatenate([x, np.zeros(pad)]).reshape(-1, _BLOCK)
    inner = np.cumsum(blocks, axis=1)
    offsets = np.concatenate([[0.0], np.cumsum(inner[:, -1])[:-1]])
    out: npt.NDArray[np.float64] = (inner + offsets[:, None]).reshape(-1)[:m]
    # The sum of an offset and a partial sum can round below the previous block's end.
    return np.maximum.accumulate(out)


def _fast_size(m: int) -> int:
    """The smallest 2**a * 3**b * 5**c >= m (sizes pocketfft handles fastest)."""
    best = 1 << max(0, (m - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < m:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best
