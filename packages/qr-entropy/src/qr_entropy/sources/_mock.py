"""``mock_uniform``: seeded, reproducible bytes with an optional controlled mean shift."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qr_entropy._base import EntropySource
from qr_entropy._errors import EntropyConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    from qr_entropy._settings import EntropySettings

__all__ = ["MockUniformSource", "tilted_byte_distribution"]

_BYTE_VALUES = np.arange(256, dtype=np.float64)
_UNIFORM_MEAN = 127.5
_MAX_ABS_SHIFT = 127.5


def _tilted(theta: float) -> npt.NDArray[np.float64]:
    # p_k ∝ exp(θ k), shifted by the largest exponent so exp never overflows.
    logits = theta * _BYTE_VALUES
    weights = np.exp(logits - logits.max())
    probabilities: npt.NDArray[np.float64] = weights / weights.sum()
    return probabilities


def tilted_byte_distribution(mean_shift: float) -> npt.NDArray[np.float64]:
    """Probabilities of the byte values 0..255 with mean ``127.5 + mean_shift``.

    Exponential tilting of the uniform distribution (p_k ∝ exp(θ k)) is the
    distribution closest to uniform in relative entropy with the asked mean,
    so a small shift simulates a small, spread-out bias rather than a stuck value.

    Args:
        mean_shift: Shift of the mean, in (-127.5, 127.5).

    Raises:
        EntropyConfigError: ``mean_shift`` is outside (-127.5, 127.5) or not finite.
    """
    if not (math.isfinite(mean_shift) and -_MAX_ABS_SHIFT < mean_shift < _MAX_ABS_SHIFT):
        raise EntropyConfigError(
            f"mock mean_shift={mean_shift!r} is outside the allowed range (-127.5, 127.5)"
        )
    if mean_shift == 0.0:
        return np.full(256, 1.0 / 256)
    target = _UNIFORM_MEAN + mean_shift
    # The mean is increasing in θ; |θ| = 60 puts it within 1e-20 of 0 or 255.
    low, high = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if float(_tilted(mid) @ _BYTE_VALUES) < target:
            low = mid
        else:
            high = mid
    return _tilted(0.5 * (low + high))


class MockUniformSource(EntropySource):
    """Seeded pseudo-random bytes for tests and bias simulations (entry point ``mock_uniform``).

    See ARCHITECTURE.md, design note "The mock source's null".

    With ``mean_shift == 0`` the bytes are exactly uniform on 0..255 (numpy's
    PCG64 ``Generator.bytes``). A non-zero shift draws each byte from the
    exponentially tilted distribution with mean ``127.5 + mean_shift``. The
    same seed and the same sequence of calls give the same bytes.
    """

    def __init__(self, seed: int | None = None, mean_shift: float = 0.0) -> None:
        """Create the source.

        Args:
            seed: Seed of the PCG64 generator; None draws a fresh seed from the OS.
            mean_shift: Shift of the byte mean, in (-127.5, 127.5).

        Raises:
            EntropyConfigError: a negative seed or a shift out of range.
        """
        if seed is not None and (isinstance(seed, bool) or seed < 0):
            raise EntropyConfigError(f"mock seed={seed!r} must be None or an int >= 0")
        self.seed = seed
        self.mean_shift = float(mean_shift)
        self._cdf = np.cumsum(tilted_byte_distribution(self.mean_shift))
        self._cdf[-1] = 1.0  # so a uniform draw just below 1 maps to 255, never to 256
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: EntropySettings) -> Self:
        """Build from ``mock_seed`` and ``mock_mean_shift``."""
        source = cls(seed=settings.mock_seed, mean_shift=settings.mock_mean_shift)
        source.configure(settings)
        return source

    @property
    def name(self) -> str:
        """``"mock_uniform"``."""
        return "mock_uniform"

    def get_random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes: uniform, or tilted to the configured mean."""
        n = self.check_request(1, n)
        with self._lock:
            if self.mean_shift == 0.0:
                return self._rng.bytes(n)
            draws = self._rng.random(n)
        return np.searchsorted(self._cdf, draws, side="right").astype(np.uint8).tobytes()

    def health_check(self) -> dict[str, object]:
        """Base status plus the seed and the mean shift."""
        status = super().health_check()
        status.update(seed=self.seed, mean_shift=self.mean_shift)
        return status
