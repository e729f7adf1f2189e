"""The default amplifier: a randomized probability integral transform of the byte sum.

The module path is public because the ``qr_core.amplifiers`` entry point
names it (``qr_core.randomized_pit:RandomizedPITAmplifier``); import the
names from ``qr_core`` itself. See ARCHITECTURE.md, design note
"Randomized PIT".
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from qr_core._byte_sum import byte_sum_cdf
from qr_core._errors import SignalAmplificationError
from qr_core.amplification import (
    POPULATION_MEAN,
    POPULATION_STD,
    BatchAmplificationResult,
    SignalAmplifier,
    check_block,
    row_sums,
)

__all__ = ["DEFAULT_AMPLIFIER", "PIT_EDGE", "V_BYTES", "RandomizedPITAmplifier"]

#: Registry name of the amplifier qr-core recommends.
DEFAULT_AMPLIFIER = "randomized_pit"
#: Bytes per row spent on V: 7 bytes = 56 bits, of which the top 53 are used.
V_BYTES = 7
#: u is kept in [PIT_EDGE, 1 − PIT_EDGE] (2**-53): the largest float below 1 is 1 − 2**-53.
PIT_EDGE = 2.0**-53
_V_BITS = 53
# Byte j of the V bytes (big-endian) weighs 256**(6 - j).
_V_WEIGHTS = np.array([1 << (8 * (V_BYTES - 1 - j)) for j in range(V_BYTES)], dtype=np.uint64)


class RandomizedPITAmplifier(SignalAmplifier):
    """``u = F(S − 1) + V · P(S)``: exactly Uniform(0, 1) under the null for every n.

    Each row of the block holds ``n + 7`` bytes. The first n (``sample_count``)
    are summed into S; F is the exact null CDF of such a sum (within 1e-12, see
    ARCHITECTURE.md, design note "Byte-sum CDF") and ``P(S) = F(S) − F(S − 1)``.
    The last 7 bytes, read big-endian, give 56 bits; the top 53 make
    ``V = (k + 1/2) / 2**53``, uniform on a grid of 2**53 midpoints.

    Under the null, S and V are independent, so u spreads each atom of S
    uniformly over its own interval ``[F(S − 1), F(S))`` and is uniform on
    (0, 1) (up to V's grid, which moves u's CDF by at most 2**-54). For a
    fixed V, u is non-decreasing in S, so a biased source moves u the way it
    moved ``zscore_mean``'s u. ``z_score`` and ``sample_mean`` are computed
    from S exactly as ``zscore_mean`` computes them, over the n S bytes.

    Args:
        population_std: σ of one byte under the null, for ``z_score`` only.

    Raises:
        SignalAmplificationError: σ not a finite number > 0.
    """

    name: ClassVar[str] = DEFAULT_AMPLIFIER
    v_bytes: ClassVar[int] = V_BYTES

    def __init__(self, population_std: float = POPULATION_STD) -> None:
        if not (math.isfinite(population_std) and population_std > 0):
            msg = f"population_std must be a finite number > 0; got {population_std!r}"
            raise SignalAmplificationError(msg)
        self.population_std = float(population_std)

    def amplify_batch(self, block: np.ndarray) -> BatchAmplificationResult:
        """Amplify each row of a ``(rows, n + 7)`` uint8 block (see the class docstring)."""
        block = check_block(block)
        width = block.shape[1]
        n = width - V_BYTES
        if n < 1:
            msg = (
                f"{self.name} needs rows of at least {V_BYTES + 1} bytes "
                f"(sample_count >= 1 plus {V_BYTES} for V); got rows of {width}"
            )
            raise SignalAmplificationError(msg)
        sums = row_sums(block[:, :n])
        v = self.v_of_bytes(block[:, n:])
        u = self.u_of_sums(sums, n, v)
        means = sums.astype(np.float64) / n
        z = (means - POPULATION_MEAN) / (self.population_std / math.sqrt(n))
        return BatchAmplificationResult(
            u=u,
            z_score=z,
            sample_mean=means,
            sample_count=n,
            amplifier=self.name,
            s_bytes=n,
            v_bytes=V_BYTES,
        )

    @staticmethod
    def v_of_bytes(v_block: np.ndarray) -> np.ndarray:
        """V in (0, 1) from each row's 7 V bytes: ``(top 53 bits + 1/2) / 2**53``."""
        bits56 = (v_block.astype(np.uint64) * _V_WEIGHTS).sum(axis=1, dtype=np.uint64)
        k = bits56 >> np.uint64(8 * V_BYTES - _V_BITS)
        v: np.ndarray = (k.astype(np.float64) + 0.5) * 2.0**-_V_BITS
        return v

    @staticmethod
    def u_of_sums(sums: np.ndarray, n: int, v: np.ndarray) -> np.ndarray:
        """u for byte sums S of n bytes and uniforms V, clamped to [2**-53, 1 − 2**-53].

        ``min(F(S − 1) + V (F(S) − F(S − 1)), F(S))``: the ``min`` keeps float
        rounding from lifting u above F(S), the bottom of the next sum's
        interval, so u stays monotone in S for a fixed V.
        """
        below, at = byte_sum_cdf(n).below_and_at(sums.astype(np.int64))
        u = np.minimum(below + v * (at - below), at)
        clamped: np.ndarray = np.minimum(np.maximum(u, PIT_EDGE), 1.0 - PIT_EDGE)
        return clamped

    def __repr__(self) -> str:
        return f"{type(self).__name__}(population_std={self.population_std!r})"
