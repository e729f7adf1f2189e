"""Signal amplification: many raw random bytes in, one uniform value u out.

The module path is public because the ``qr_core.amplifiers`` entry points
name it (``qr_core.amplification:ZScoreMeanAmplifier``); import the names
from ``qr_core`` itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from qr_core._errors import SignalAmplificationError
from qr_core._registry import ComponentRegistry

__all__ = [
    "DEFAULT_UNIFORM_CLAMP_EPSILON",
    "POPULATION_MEAN",
    "POPULATION_STD",
    "AmplificationResult",
    "AmplifierRegistry",
    "BatchAmplificationResult",
    "SignalAmplifier",
    "ZScoreMeanAmplifier",
    "check_block",
    "row_sums",
]

#: Mean of a byte drawn uniformly from 0..255.
POPULATION_MEAN: float = 127.5
#: Standard deviation of a byte drawn uniformly from the integers 0..255: sqrt((256² − 1) / 12).
#: 255 / sqrt(12) = 73.612 is the continuous-uniform value and makes z over-dispersed
#: (see ARCHITECTURE.md, design note "The null σ").
POPULATION_STD: float = math.sqrt((256**2 - 1) / 12)
#: u is clamped to [ε, 1 − ε] so the CDF lookup never sees exactly 0 or 1.
DEFAULT_UNIFORM_CLAMP_EPSILON: float = 1e-10

# numpy has no erfc; the C library's, applied per row, costs well under a microsecond a row.
_erfc = np.frompyfunc(math.erfc, 1, 1)
# The longest row whose byte sum (at most 255 per byte) fits in a uint32.
_UINT32_SUM_MAX_BYTES = (2**32 - 1) // 255


@dataclass(frozen=True, slots=True)
class AmplificationResult:
    """One amplified value.

    Attributes:
        u: The uniform value in [ε, 1 − ε].
        z_score: The sample mean's z-score under the null hypothesis.
        sample_mean: Mean of the S bytes.
        sample_count: How many bytes went into S (the z-score's n).
        amplifier: The amplifier's registry name.
        s_bytes: Bytes summed into S (equal to ``sample_count``).
        v_bytes: Further bytes of the same row spent on the uniform V (0 for ``zscore_mean``).
    """

    u: float
    z_score: float
    sample_mean: float
    sample_count: int
    amplifier: str = ""
    s_bytes: int = 0
    v_bytes: int = 0


@dataclass(frozen=True, slots=True)
class BatchAmplificationResult:
    """Amplified values for each row of a block; float64 arrays of shape ``(rows,)``.

    Attributes:
        u: Uniform values in [ε, 1 − ε].
        z_score: z-scores of the row means.
        sample_mean: Row means of the S bytes.
        sample_count: Bytes per row that went into S (the z-score's n).
        amplifier: The amplifier's registry name.
        s_bytes: Bytes per row summed into S (equal to ``sample_count``).
        v_bytes: Further bytes per row spent on the uniform V (0 for ``zscore_mean``).
    """

    u: npt.NDArray[np.float64]
    z_score: npt.NDArray[np.float64]
    sample_mean: npt.NDArray[np.float64]
    sample_count: int
    amplifier: str = ""
    s_bytes: int = 0
    v_bytes: int = 0


class SignalAmplifier(ABC):
    """Turns raw random bytes into a uniform value u in (0, 1).

    Subclasses implement :meth:`amplify_batch`; :meth:`amplify` is the
    one-row form built on it.
    """

    #: The name the class is selected by (its entry-point name).
    name: ClassVar[str] = ""
    #: Bytes each row spends beyond the ``sample_count`` bytes summed into S.
    v_bytes: ClassVar[int] = 0

    def row_bytes(self, sample_count: int) -> int:
        """How many bytes a row must hold for ``sample_count`` bytes to go into S.

        Args:
            sample_count: Bytes wanted in S (the z-score's n), >= 1.

        Returns:
            ``sample_count + v_bytes``: the width of the block to fetch.
        """
        return sample_count + self.v_bytes

    def amplify(
        self, raw_bytes: bytes | bytearray | memoryview | np.ndarray
    ) -> AmplificationResult:
        """Amplify one sequence of bytes.

        Args:
            raw_bytes: The bytes, or a 1-D uint8 array.

        Returns:
            The uniform value and its statistics.

        Raises:
            SignalAmplificationError: Empty input or a wrong type or dtype.
        """
        value: object = raw_bytes  # callers outside mypy pass anything
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                msg = f"raw_bytes must be 1-D; got an array of shape {value.shape}"
                raise SignalAmplificationError(msg)
            row = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            row = np.frombuffer(value, dtype=np.uint8)
        else:
            msg = (
                "raw_bytes must be bytes, bytearray, memoryview or a uint8 numpy array; "
                f"got {type(value).__name__}"
            )
            raise SignalAmplificationError(msg)
        batch = self.amplify_batch(row[None, :])
        return AmplificationResult(
            u=float(batch.u[0]),
            z_score=float(batch.z_score[0]),
            sample_mean=float(batch.sample_mean[0]),
            sample_count=batch.sample_count,
            amplifier=batch.amplifier,
            s_bytes=batch.s_bytes,
            v_bytes=batch.v_bytes,
        )

    @abstractmethod
    def amplify_batch(self, block: np.ndarray) -> BatchAmplificationResult:
        """Amplify each row of a ``(rows, n)`` uint8 block in one vectorised step.

        Args:
            block: One row of n bytes per value wanted.

        Returns:
            Arrays of shape ``(rows,)``.

        Raises:
            SignalAmplificationError: A wrong dtype or shape, or an empty block.
        """


class AmplifierRegistry(ComponentRegistry[SignalAmplifier]):
    """Amplifiers by name, from the ``qr_core.amplifiers`` entry points (built-ins included)."""

    group = "qr_core.amplifiers"
    kind = "amplifier"
    base = SignalAmplifier


def check_block(block: object) -> np.ndarray:
    """Check that ``block`` is a non-empty 2-D uint8 array; return it.

    Raises:
        SignalAmplificationError: Another type, dtype or shape.
    """
    if not isinstance(block, np.ndarray):
        msg = f"block must be a numpy uint8 array of shape (rows, n); got {type(block).__name__}"
        raise SignalAmplificationError(msg)
    if block.dtype != np.uint8:
        msg = f"block must have dtype uint8; got {block.dtype}"
        raise SignalAmplificationError(msg)
    if block.ndim != 2 or 0 in block.shape:
        msg = f"block must have shape (rows, n) with rows >= 1 and n >= 1; got {block.shape}"
        raise SignalAmplificationError(msg)
    return block


def row_sums(block: np.ndarray) -> np.ndarray:
    """Exact integer sum of each row of a uint8 block (uint32, or uint64 for very long rows)."""
    # A float accumulator would round for large n. A 32-bit accumulator holds any row
    # of up to 16,843,009 bytes and sums twice as fast as a 64-bit one.
    acc = np.uint32 if block.shape[1] <= _UINT32_SUM_MAX_BYTES else np.uint64
    sums: np.ndarray = block.sum(axis=1, dtype=acc)
    return sums


class ZScoreMeanAmplifier(SignalAmplifier):
    """z-score of the byte mean, through the standard normal CDF (entry point ``zscore_mean``).

    For n bytes with mean M: ``z = (M − μ) / (σ / √n)`` and
    ``u = Φ(z)`` clamped to ``[ε, 1 − ε]``. Under the null hypothesis
    (uniform bytes) z is standard normal for large n, so u is uniform, and a
    per-byte bias δ moves z by ``δ √n / σ``: the amplification.

    n is always the number of bytes actually received, so the standard error
    follows the sample.

    Args:
        population_mean: μ, the byte mean under the null hypothesis.
        population_std: σ, the byte standard deviation under the null hypothesis.
        uniform_clamp_epsilon: ε, in (0, 0.5).

    Raises:
        SignalAmplificationError: A parameter that is not finite, σ <= 0, or ε outside (0, 0.5).
    """

    name: ClassVar[str] = "zscore_mean"

    def __init__(
        self,
        population_mean: float = POPULATION_MEAN,
        population_std: float = POPULATION_STD,
        uniform_clamp_epsilon: float = DEFAULT_UNIFORM_CLAMP_EPSILON,
    ) -> None:
        if not math.isfinite(population_mean):
            msg = f"population_mean must be a finite number; got {population_mean!r}"
            raise SignalAmplificationError(msg)
        if not (math.isfinite(population_std) and population_std > 0):
            msg = f"population_std must be a finite number > 0; got {population_std!r}"
            raise SignalAmplificationError(msg)
        if not 0 < uniform_clamp_epsilon < 0.5:
            msg = f"uniform_clamp_epsilon must be in (0, 0.5); got {uniform_clamp_epsilon!r}"
            raise SignalAmplificationError(msg)
        self.population_mean = float(population_mean)
        self.population_std = float(population_std)
        self.uniform_clamp_epsilon = float(uniform_clamp_epsilon)

    def amplify_batch(self, block: np.ndarray) -> BatchAmplificationResult:
        """Amplify each row of a ``(rows, n)`` uint8 block (see the class docstring)."""
        block = check_block(block)
        n = block.shape[1]
        u, z, means = self.u_of_sums(row_sums(block), n)
        return BatchAmplificationResult(
            u=u,
            z_score=z,
            sample_mean=means,
            sample_count=n,
            amplifier=self.name,
            s_bytes=n,
            v_bytes=0,
        )

    def u_of_sums(
        self, sums: np.ndarray, n: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(u, z, mean)`` for integer byte sums of rows of n bytes."""
        means = sums.astype(np.float64) / n
        z = (means - self.population_mean) / (self.population_std / math.sqrt(n))
        # Φ(z) = erfc(−z / √2) / 2 keeps full relative precision in the lower tail.
        u = 0.5 * np.asarray(_erfc(-z / math.sqrt(2.0)), dtype=np.float64)
        eps = self.uniform_clamp_epsilon
        return np.clip(u, eps, 1.0 - eps), z, means

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(population_mean={self.population_mean!r}, "
            f"population_std={self.population_std!r}, "
            f"uniform_clamp_epsilon={self.uniform_clamp_epsilon!r})"
        )
