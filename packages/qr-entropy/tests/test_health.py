"""SP 800-90B §4.4 continuous health tests.

False-alarm rate: the default is α = 2^-40 per test decision (the conservative
end of the 2^-20..2^-40 range SP 800-90B recommends). The quiet test runs
64 MiB of os.urandom through the default tests and expects no alarm (the
expected number is below 1e-4). The rate itself is checked empirically at a
large α (2^-4 and 2^-16), where alarms are frequent enough to count, against
the exact probabilities from scipy.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import pytest
from qr_entropy import (
    EntropyConfigError,
    EntropySettings,
    EntropySource,
    HealthMonitor,
    HealthTestCutoffs,
    HealthTestFailure,
)
from qr_entropy._health import adaptive_proportion_cutoff, repetition_count_cutoff
from scipy import stats

BLOCK = (64, 20480)


class ArraySource(EntropySource):
    """A physical-source stand-in that serves the bytes of a generator function."""

    health_tested = True

    def __init__(self, make: object) -> None:
        self.make = make

    @property
    def name(self) -> str:
        return "array"

    def get_random_bytes(self, n: int) -> bytes:
        return self.make(n)  # type: ignore[operator, no-any-return]


def _biased(n: int, rng: np.random.Generator, p_zero: float) -> bytes:
    data = rng.integers(0, 256, n, dtype=np.uint8)
    data[rng.random(n) < p_zero] = 0
    return data.tobytes()


@pytest.mark.parametrize(
    ("alpha", "entropy", "expected"),
    [(2.0**-40, 7.0, 7), (2.0**-40, 8.0, 6), (2.0**-20, 1.0, 21), (2.0**-30, 0.5, 61)],
)
def test_repetition_cutoff_formula(alpha: float, entropy: float, expected: int) -> None:
    assert repetition_count_cutoff(alpha, entropy) == expected
    assert repetition_count_cutoff(alpha, entropy) == 1 + math.ceil(-math.log2(alpha) / entropy)


@pytest.mark.parametrize(
    ("alpha", "entropy"),
    [(2.0**-40, 7.0), (2.0**-40, 8.0), (2.0**-20, 1.0), (2.0**-30, 0.5), (2.0**-4, 8.0)],
)
def test_proportion_cutoff_matches_scipy(alpha: float, entropy: float) -> None:
    cutoff = adaptive_proportion_cutoff(alpha, entropy)
    p = 2.0**-entropy
    # B = 1 + Binomial(511, p); a false alarm is B >= cutoff.
    assert stats.binom.sf(cutoff - 2, 511, p) <= alpha
    assert stats.binom.sf(cutoff - 3, 511, p) > alpha  # one lower would exceed α
    # never below SP 800-90B's 1 + CRITBINOM(W, 2^-H, 1 - α), at most one above it
    standard = 1 + int(stats.binom.isf(alpha, 512, p))
    assert standard <= cutoff <= standard + 1


@pytest.mark.parametrize(
    ("alpha", "entropy", "match"),
    [
        (0.5, 7.0, r"false_alarm_rate=0.5 is outside the allowed range \[2\*\*-64, 2\*\*-4\]"),
        (0.0, 7.0, "false_alarm_rate=0.0"),
        (2.0**-40, 9.0, r"min_entropy_per_byte=9.0 is outside the allowed range \[0.25, 8.0\]"),
        (2.0**-40, 0.1, "min_entropy_per_byte=0.1"),
    ],
)
def test_bad_parameters(alpha: float, entropy: float, match: str) -> None:
    with pytest.raises(EntropyConfigError, match=match):
        HealthTestCutoffs.derive(alpha, entropy)


def test_bad_window() -> None:
    with pytest.raises(EntropyConfigError, match="window_size=1"):
        adaptive_proportion_cutoff(2.0**-20, 8.0, window_size=1)


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("all zeros", bytes),
        ("stuck at 0xA5", lambda n: b"\xa5" * n),
        ("repeating pair", lambda n: (b"\x00\xff" * n)[:n]),
        ("repeating 16-byte pattern", lambda n: (bytes(range(0, 256, 16)) * n)[:n]),
        (
            "counter with stutter",
            lambda n: np.repeat(np.arange(n), 8)[:n].astype(np.uint8).tobytes(),
        ),
    ],
)
def test_stuck_and_repeating_sources_fail_within_one_block(label: str, make: object) -> None:
    source = ArraySource(make)
    with pytest.raises(HealthTestFailure):
        source.fetch_block(1, 20480)
    status = source.health_check()
    assert status["health"] == "failed"
    assert status["last_failure"]


def test_heavily_biased_source_fails_within_one_block() -> None:
    # One byte value in a fifth of the samples: the adaptive proportion test's case.
    rng = np.random.default_rng(0)
    source = ArraySource(lambda n: _biased(n, rng, 0.2))
    with pytest.raises(HealthTestFailure, match="adaptive proportion test failed"):
        source.fetch_block(1, 20480)
    assert source.health_check()["proportion_failures"] == 1


def test_failure_resets_and_the_next_good_block_passes() -> None:
    feed = iter([bytes(1024), os.urandom(1024)])
    source = ArraySource(lambda n: next(feed))
    with pytest.raises(HealthTestFailure):
        source.fetch(1024)
    assert source.fetch(1024).provenance.health.value == "ok"
    status = source.health_check()
    assert status["health"] == "ok"
    assert status["repetition_failures"] == 1
    assert status["blocks_tested"] == 2


def _feed(monitor: HealthMonitor, *blocks: np.ndarray) -> None:
    for block in blocks:
        monitor.test_block(block)


def _unique_run_stream(n: int, run_at: int, run_length: int) -> np.ndarray:
    # Consecutive bytes always differ, except for one run of identical bytes.
    data = (np.arange(n) % 251).astype(np.uint8)
    data[run_at : run_at + run_length] = 7
    data[run_at - 1] = 6
    data[run_at + run_length] = 8
    return data


@pytest.mark.parametrize("split", [1, 2, 50, 99, 100, 101, 103, 104, 105, 199])
def test_repetition_run_straddling_blocks_is_caught(split: int) -> None:
    cutoffs = HealthTestCutoffs.derive(2.0**-40, 8.0)  # cutoff 6
    stream = _unique_run_stream(200, 100, cutoffs.repetition_cutoff)
    monitor = HealthMonitor(cutoffs)
    with pytest.raises(HealthTestFailure, match="a run of 6 identical bytes"):
        _feed(monitor, stream[:split], stream[split:])


@pytest.mark.parametrize("split", [1, 100, 102, 104, 199])
def test_run_one_short_of_the_cutoff_passes_at_any_split(split: int) -> None:
    cutoffs = HealthTestCutoffs.derive(2.0**-40, 8.0)
    stream = _unique_run_stream(200, 100, cutoffs.repetition_cutoff - 1)
    monitor = HealthMonitor(cutoffs)
    monitor.test_block(stream[:split])
    monitor.test_block(stream[split:])
    monitor.test_block(np.array([], dtype=np.uint8))
    assert monitor.failures == 0


def test_single_byte_blocks_carry_the_run() -> None:
    monitor = HealthMonitor(HealthTestCutoffs.derive(2.0**-40, 8.0))
    for _ in range(5):
        monitor.test_block(np.array([9], dtype=np.uint8))
    with pytest.raises(HealthTestFailure):
        monitor.test_block(np.array([9], dtype=np.uint8))


@pytest.mark.parametrize("split", [1, 256, 511, 512, 700])
def test_proportion_window_straddling_blocks_is_caught(split: int) -> None:
    cutoffs = HealthTestCutoffs(
        false_alarm_rate=2.0**-40,
        min_entropy_per_byte=8.0,
        repetition_cutoff=10**6,
        proportion_cutoff=20,
        window_size=512,
    )
    window = (np.arange(512) % 200 + 20).astype(np.uint8)
    window[::26] = 3  # the window's first byte, 20 times, spread over the window
    monitor = HealthMonitor(cutoffs)
    with pytest.raises(HealthTestFailure, match="filled 20 of 512"):
        _feed(monitor, window[:split], window[split:])
    # the same bytes one short of the cutoff pass however they are split
    window[26 * 19] = 4
    quiet = HealthMonitor(cutoffs)
    quiet.test_block(window[:split])
    quiet.test_block(window[split:])
    assert quiet.failures == 0


def test_quiet_on_os_urandom_over_a_long_run() -> None:
    # 64 MiB at the default α = 2^-40: the expected number of false alarms is < 1e-4.
    source = ArraySource(os.urandom)
    rows, n = BLOCK
    blocks = (64 << 20) // (rows * n)
    for _ in range(blocks):
        assert source.fetch_block(rows, n).provenance.health.value == "ok"
    status = source.health_check()
    assert status["samples_tested"] == blocks * rows * n
    assert status["repetition_failures"] == status["proportion_failures"] == 0


def test_default_settings_cutoffs() -> None:
    source = ArraySource(os.urandom)
    source.configure(EntropySettings())
    assert source.health_monitor.cutoffs == HealthTestCutoffs.derive()
    assert source.health_monitor.cutoffs.false_alarm_rate == 2.0**-40


def _alarms_per_window(cutoffs: HealthTestCutoffs, windows: int) -> int:
    monitor = HealthMonitor(cutoffs)
    data = np.frombuffer(os.urandom(windows * 512), dtype=np.uint8).reshape(windows, 512)
    for row in data:
        with contextlib.suppress(HealthTestFailure):
            monitor.test_block(row)
    return monitor.failures


def test_proportion_false_alarm_rate_matches_alpha() -> None:
    alpha = 2.0**-4
    base = HealthTestCutoffs.derive(alpha, 8.0)
    cutoffs = HealthTestCutoffs(alpha, 8.0, 10**6, base.proportion_cutoff, 512)  # APT only
    windows = 16384
    alarms = _alarms_per_window(cutoffs, windows)
    exact = stats.binom.sf(cutoffs.proportion_cutoff - 2, 511, 1 / 256)
    assert exact <= alpha
    assert stats.binomtest(alarms, windows, exact).pvalue > 1e-6


def test_repetition_false_alarm_rate_matches_alpha() -> None:
    alpha = 2.0**-16
    base = HealthTestCutoffs.derive(alpha, 8.0)  # cutoff 3: a run of 3 has probability 2^-16
    cutoffs = HealthTestCutoffs(alpha, 8.0, base.repetition_cutoff, 513, 512)  # RCT only
    windows = 16384
    alarms = _alarms_per_window(cutoffs, windows)
    expected = windows * 510 * alpha  # positions where a run of 3 can start, per window
    assert stats.poisson.cdf(alarms, expected) > 1e-6
    assert stats.poisson.sf(alarms - 1, expected) > 1e-6
