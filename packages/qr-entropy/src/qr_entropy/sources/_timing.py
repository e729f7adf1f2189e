"""``timing_noise``: CPU timing jitter, conditioned with SHA-256. Experimental, and not quantum."""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from qr_entropy._base import EntropySource
from qr_entropy._errors import EntropyConfigError
from qr_entropy._health import (
    DEFAULT_FALSE_ALARM_RATE,
    MIN_ENTROPY_LOWER,
    MIN_ENTROPY_UPPER,
    HealthMonitor,
    HealthTestCutoffs,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from qr_entropy._settings import EntropySettings

__all__ = ["TimingNoiseSource"]

# A clock coarser than this cannot show the tens-of-nanoseconds jitter the source reads.
_MAX_CLOCK_RESOLUTION_S = 1e-6
_DIGEST_BYTES = 32
# SP 800-90B §3.1.5.1.2: a vetted conditioner gives full-entropy output when its
# input holds at least 64 bits more entropy than it outputs.
_CONDITIONER_INPUT_BITS = 8 * _DIGEST_BYTES + 64


class TimingNoiseSource(EntropySource):
    """Bytes from the jitter between consecutive ``time.perf_counter_ns`` reads.

    EXPERIMENTAL and NOT QUANTUM: the jitter comes from caches, interrupts,
    frequency scaling and the scheduler; it is classical, can be influenced by
    other load on the machine, and its entropy per read is a claim
    (``min_entropy_per_read``), not an SP 800-90B assessment. Use it to
    demonstrate and test the pipeline, not for research conclusions.

    The raw noise samples are the timer deltas. Their low bytes run through the
    SP 800-90B continuous health tests with the claimed entropy per read, so a
    clock that stops jittering is caught before conditioning hides it. Each 32
    output bytes are the SHA-256 digest of enough deltas to carry 320 bits of
    claimed entropy, which removes the bias and the correlation of the raw
    deltas (a plain von Neumann corrector leaves the correlation in). The
    output bytes are health-tested again like those of every physical source.
    """

    health_tested = True

    def __init__(
        self,
        min_entropy_per_read: float = 0.25,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    ) -> None:
        """Create the source.

        Args:
            min_entropy_per_read: Claimed min-entropy of one timer delta, in
                bits, in [0.25, 8]; fewer bits mean more reads per output byte.
                The default, 0.25, is set below what bursts of evenly spaced
                reads allowed on a 2-core VM: runs of up to 94 identical deltas,
                which fail the repetition test at a 0.5-bit claim (cutoff 81).
            false_alarm_rate: α of the health tests on the raw deltas.

        Raises:
            EntropyConfigError: an argument out of range.
        """
        if not MIN_ENTROPY_LOWER <= min_entropy_per_read <= MIN_ENTROPY_UPPER:
            raise EntropyConfigError(
                f"timing min_entropy_per_read={min_entropy_per_read!r} is outside "
                f"[{MIN_ENTROPY_LOWER}, {MIN_ENTROPY_UPPER}] bits"
            )
        self.min_entropy_per_read = float(min_entropy_per_read)
        self.reads_per_digest = math.ceil(_CONDITIONER_INPUT_BITS / self.min_entropy_per_read)
        self.raw_monitor = HealthMonitor(
            HealthTestCutoffs.derive(false_alarm_rate, self.min_entropy_per_read)
        )

    @classmethod
    def from_settings(cls, settings: EntropySettings) -> Self:
        """Build from ``timing_min_entropy_per_read`` and the health settings."""
        source = cls(
            min_entropy_per_read=settings.timing_min_entropy_per_read,
            false_alarm_rate=settings.health_false_alarm_rate,
        )
        source.configure(settings)
        return source

    @property
    def name(self) -> str:
        """``"timing_noise"``."""
        return "timing_noise"

    @property
    def is_available(self) -> bool:
        """True when ``perf_counter`` resolves at least a microsecond."""
        return time.get_clock_info("perf_counter").resolution <= _MAX_CLOCK_RESOLUTION_S

    def get_random_bytes(self, n: int) -> bytes:
        """Return ``n`` conditioned bytes of timing jitter.

        Raises:
            HealthTestFailure: the raw timer deltas failed a continuous health
                test (for example a clock that returns evenly spaced values).
        """
        n = self.check_request(1, n)
        digests = -(-n // _DIGEST_BYTES)
        clock = time.perf_counter_ns
        stamps = np.array(
            [clock() for _ in range(digests * self.reads_per_digest + 1)], dtype=np.int64
        )
        deltas = np.diff(stamps)
        self.raw_monitor.test_block((deltas & 0xFF).astype(np.uint8))
        rows = deltas.reshape(digests, self.reads_per_digest)
        output = b"".join(hashlib.sha256(row.tobytes()).digest() for row in rows)
        return output[:n]

    def health_check(self) -> dict[str, object]:
        """Base status plus the raw-delta health tests."""
        status = super().health_check()
        status["raw_delta_health"] = self.raw_monitor.snapshot()
        status["min_entropy_per_read"] = self.min_entropy_per_read
        return status
