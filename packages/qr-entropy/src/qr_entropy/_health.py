"""Continuous health tests of NIST SP 800-90B §4.4 on a stream of bytes.

Both tests treat one byte as one noise sample. Their state (the current run,
the current window) carries over from one block to the next, as the standard
prescribes for a continuous test, so a run or a window that straddles two
fetches is tested the same as one inside a fetch. Each block is tested with a
handful of vectorised numpy passes, never a Python loop over bytes.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qr_entropy._errors import EntropyConfigError, HealthTestFailure

__all__ = [
    "APT_WINDOW_SIZE",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_MIN_ENTROPY_PER_BYTE",
    "HealthMonitor",
    "HealthTestCutoffs",
    "adaptive_proportion_cutoff",
    "repetition_count_cutoff",
]

logger = logging.getLogger(__name__)

#: SP 800-90B §4.4.2 fixes the window at 512 samples for non-binary noise sources.
APT_WINDOW_SIZE = 512
#: 2^-40: the conservative end of the range SP 800-90B §4.4 recommends (2^-20 to 2^-40).
#: At full entropy it is about one false alarm per 10^12 bytes tested.
DEFAULT_FALSE_ALARM_RATE = 2.0**-40
#: Assessed min-entropy of one byte. 7 bits is a cautious claim for conditioned
#: QRNG output; a raw physical source should set its own SP 800-90B assessment.
DEFAULT_MIN_ENTROPY_PER_BYTE = 7.0

MIN_FALSE_ALARM_RATE = 2.0**-64
MAX_FALSE_ALARM_RATE = 2.0**-4
#: At 0.25 bits (α = 2^-40) the repetition cutoff is already a run of 161 and the
#: adaptive proportion cutoff 484 of 512: a lower claim would leave little to test.
MIN_ENTROPY_LOWER = 0.25
MIN_ENTROPY_UPPER = 8.0

_UInt8Array = npt.NDArray[np.uint8]


def _check_parameters(false_alarm_rate: float, min_entropy_per_byte: float) -> None:
    if not (MIN_FALSE_ALARM_RATE <= false_alarm_rate <= MAX_FALSE_ALARM_RATE):
        raise EntropyConfigError(
            f"health false_alarm_rate={false_alarm_rate!r} is outside the allowed range "
            f"[2**-64, 2**-4] (SP 800-90B recommends 2**-20 to 2**-40)"
        )
    if not (MIN_ENTROPY_LOWER <= min_entropy_per_byte <= MIN_ENTROPY_UPPER):
        raise EntropyConfigError(
            f"health min_entropy_per_byte={min_entropy_per_byte!r} is outside the allowed "
            f"range [{MIN_ENTROPY_LOWER}, {MIN_ENTROPY_UPPER}] bits per byte"
        )


def repetition_count_cutoff(false_alarm_rate: float, min_entropy_per_byte: float) -> int:
    """Cutoff C of the repetition count test (SP 800-90B §4.4.1).

    Args:
        false_alarm_rate: Probability α that a run of C identical samples occurs
            at a given position in full-entropy output.
        min_entropy_per_byte: Assessed min-entropy H of one byte, in bits.

    Returns:
        ``C = 1 + ceil(-log2(α) / H)``: a run of C identical bytes is a failure.
    """
    _check_parameters(false_alarm_rate, min_entropy_per_byte)
    return 1 + math.ceil(-math.log2(false_alarm_rate) / min_entropy_per_byte)


def adaptive_proportion_cutoff(
    false_alarm_rate: float,
    min_entropy_per_byte: float,
    window_size: int = APT_WINDOW_SIZE,
) -> int:
    """Cutoff C of the adaptive proportion test (SP 800-90B §4.4.2).

    The test counts B, the occurrences of a window's first byte among the
    window's W bytes (the first one included), and fails when B >= C. For
    full-entropy bytes B - 1 ~ Binomial(W - 1, 2^-H), so C is chosen as the
    smallest value with ``P(1 + Binomial(W - 1, 2^-H) >= C) <= α``: the
    false-alarm rate per window is at most α, exactly. SP 800-90B writes the
    cutoff as ``1 + CRITBINOM(W, 2^-H, 1 - α)``, which ignores that the first
    byte is counted and so gives a cutoff up to one lower and a false-alarm
    rate up to about 5x above α (for H = 8, α = 2^-40); this choice never
    exceeds the stated α.

    Args:
        false_alarm_rate: α, the probability of a failure in one window of
            full-entropy output.
        min_entropy_per_byte: Assessed min-entropy H of one byte, in bits.
        window_size: Samples per window W.

    Returns:
        The cutoff C; a window whose first byte appears C or more times fails.
    """
    _check_parameters(false_alarm_rate, min_entropy_per_byte)
    if window_size < 2:
        raise EntropyConfigError(f"APT window_size={window_size!r} must be at least 2")
    trials = window_size - 1
    p = 2.0**-min_entropy_per_byte
    ks = np.arange(trials + 1, dtype=np.float64)
    log_choose = np.array(
        [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) for k in ks]
    )
    log_pmf = log_choose + ks * math.log(p) + (trials - ks) * math.log1p(-p)
    # Upper tails summed from the top so that tails near 1e-12 keep full precision.
    upper = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # upper[k] = P(X >= k)
    below = np.flatnonzero(upper <= false_alarm_rate)
    k = int(below[0]) if below.size else trials + 1
    return 1 + k


@dataclass(frozen=True, slots=True)
class HealthTestCutoffs:
    """The parameters and derived cutoffs of both continuous tests.

    Attributes:
        false_alarm_rate: α, the probability of a false alarm per test decision.
        min_entropy_per_byte: H, the assessed min-entropy of one byte in bits.
        repetition_cutoff: C of the repetition count test.
        proportion_cutoff: C of the adaptive proportion test.
        window_size: W of the adaptive proportion test.
    """

    false_alarm_rate: float
    min_entropy_per_byte: float
    repetition_cutoff: int
    proportion_cutoff: int
    window_size: int

    @classmethod
    def derive(
        cls,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        min_entropy_per_byte: float = DEFAULT_MIN_ENTROPY_PER_BYTE,
        window_size: int = APT_WINDOW_SIZE,
    ) -> HealthTestCutoffs:
        """Derive both cutoffs from α and H."""
        return cls(
            false_alarm_rate=false_alarm_rate,
            min_entropy_per_byte=min_entropy_per_byte,
            repetition_cutoff=repetition_count_cutoff(false_alarm_rate, min_entropy_per_byte),
            proportion_cutoff=adaptive_proportion_cutoff(
                false_alarm_rate, min_entropy_per_byte, window_size
            ),
            window_size=window_size,
        )


class HealthMonitor:
    """Runs the repetition count and adaptive proportion tests over a byte stream.

    Feed it every block the source delivers, in order, with `test_block`. A
    failure raises `HealthTestFailure`, is counted, and restarts both tests so
    the next block is judged on its own (the standard leaves recovery to the
    implementation; a fresh start keeps one bad burst from failing later blocks).
    """

    def __init__(self, cutoffs: HealthTestCutoffs | None = None) -> None:
        """Create a monitor.

        Args:
            cutoffs: The test parameters; the SP 800-90B defaults of this module when None.
        """
        self.cutoffs = cutoffs if cutoffs is not None else HealthTestCutoffs.derive()
        self._lock = threading.Lock()
        self.samples_tested = 0
        self.blocks_tested = 0
        self.repetition_failures = 0
        self.proportion_failures = 0
        self.last_failure = ""
        self.last_block_passed: bool | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._run_value = -1  # no previous sample
        self._run_length = 0
        self._window_value = -1
        self._window_count = 0
        self._window_seen = 0  # samples of the current window already seen; 0 = none open

    @property
    def failures(self) -> int:
        """Total number of failed blocks."""
        return self.repetition_failures + self.proportion_failures

    def test_block(self, block: _UInt8Array) -> None:
        """Test the next bytes of the stream.

        Args:
            block: uint8 array of any shape; tested in C order as one run of samples.

        Raises:
            HealthTestFailure: a run of identical bytes reached the repetition
                cutoff, or a window's first byte reached the proportion cutoff.
        """
        x = np.ascontiguousarray(block, dtype=np.uint8).reshape(-1)
        if x.size == 0:
            return
        with self._lock:
            try:
                longest_run = self._repetition_count(x)
                if longest_run >= self.cutoffs.repetition_cutoff:
                    self.repetition_failures += 1
                    self._fail(
                        f"repetition count test failed: a run of {longest_run} identical bytes "
                        f"(cutoff {self.cutoffs.repetition_cutoff})"
                    )
                most_common = self._adaptive_proportion(x)
                if most_common >= self.cutoffs.proportion_cutoff:
                    self.proportion_failures += 1
                    self._fail(
                        f"adaptive proportion test failed: a byte value filled {most_common} "
                        f"of {self.cutoffs.window_size} samples in a window "
                        f"(cutoff {self.cutoffs.proportion_cutoff})"
                    )
            finally:
                self.samples_tested += int(x.size)
                self.blocks_tested += 1
            self.last_block_passed = True

    def _fail(self, message: str) -> None:
        self.last_failure = message
        self.last_block_passed = False
        self._reset_state()
        logger.warning("health test failure: %s", message)
        raise HealthTestFailure(message)

    def _repetition_count(self, x: _UInt8Array) -> int:
        """Advance the repetition count test; return the longest run seen in this block."""
        n = int(x.size)
        start_run = self._run_length + 1 if int(x[0]) == self._run_value else 1
        # equal[i] is True where x[i + 1] continues the run of x[i]; on healthy data
        # it is rarely set, so the runs are found among a few thousand indices.
        equal_at = np.flatnonzero(x[1:] == x[:-1])
        if equal_at.size == 0:
            longest = start_run
            end_run = start_run if n == 1 else 1
        else:
            breaks = np.flatnonzero(np.diff(equal_at) != 1)
            firsts = np.concatenate(([0], breaks + 1))
            lasts = np.concatenate((breaks, [equal_at.size - 1]))
            runs = lasts - firsts + 2  # k consecutive equalities make a run of k + 1 bytes
            if equal_at[0] == 0:
                runs[0] += start_run - 1
            longest = max(int(runs.max()), start_run)
            end_run = int(runs[-1]) if equal_at[-1] == n - 2 else 1
        self._run_value = int(x[-1])
        self._run_length = end_run
        return longest

    def _adaptive_proportion(self, x: _UInt8Array) -> int:
        """Advance the adaptive proportion test; return the highest window count seen."""
        window = self.cutoffs.window_size
        n = int(x.size)
        pos = 0
        highest = 0
        if self._window_seen:
            take = min(window - self._window_seen, n)
            self._window_count += int(np.count_nonzero(x[:take] == self._window_value))
            self._window_seen += take
            highest = self._window_count
            if self._window_seen == window:
                self._window_seen = 0
            pos = take
        full = (n - pos) // window
        if full:
            windows = x[pos : pos + full * window].reshape(full, window)
            # Summing the comparison as uint8 -> uint16 is about 2.5x faster than a bool sum.
            hits = (windows == windows[:, :1]).view(np.uint8)
            counts = hits.sum(axis=1, dtype=np.uint16)
            highest = max(highest, int(counts.max()))
            pos += full * window
        if pos < n:
            self._window_value = int(x[pos])
            self._window_count = int(np.count_nonzero(x[pos:] == x[pos]))
            self._window_seen = n - pos
            highest = max(highest, self._window_count)
        return highest

    def snapshot(self) -> dict[str, object]:
        """Counters and cutoffs for `EntropySource.health_check`."""
        with self._lock:
            return {
                "health_tests": "SP 800-90B 4.4 repetition count + adaptive proportion",
                "false_alarm_rate": self.cutoffs.false_alarm_rate,
                "min_entropy_per_byte": self.cutoffs.min_entropy_per_byte,
                "repetition_cutoff": self.cutoffs.repetition_cutoff,
                "proportion_cutoff": self.cutoffs.proportion_cutoff,
                "proportion_window": self.cutoffs.window_size,
                "samples_tested": self.samples_tested,
                "blocks_tested": self.blocks_tested,
                "repetition_failures": self.repetition_failures,
                "proportion_failures": self.proportion_failures,
                "last_failure": self.last_failure,
            }
