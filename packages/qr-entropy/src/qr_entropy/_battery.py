"""The statistical battery behind ``qr-entropy check``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qr_entropy._base import EntropySource
from qr_entropy._errors import EntropyConfigError, HealthTestFailure
from qr_entropy._health import HealthMonitor, HealthTestCutoffs
from qr_entropy._stats import chi2_sf, ks_uniform, normal_two_sided_p, zscore_u

__all__ = ["BatteryReport", "CheckResult", "run_battery"]

_MIN_KS_VALUES = 35  # below this the asymptotic KS p-value is not trustworthy


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the battery.

    Attributes:
        name: The test.
        statistic: Its statistic, formatted for the table.
        p_value: Its p-value, or None for tests judged against a cutoff.
        passed: Whether the source passed; None for informational rows.
        detail: What was measured and how it was judged.
    """

    name: str
    statistic: str
    p_value: float | None
    passed: bool | None
    detail: str


@dataclass(frozen=True, slots=True)
class BatteryReport:
    """Every row of one battery run and its overall verdict."""

    source: str
    n_bytes: int
    alpha: float
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        """True when no row failed."""
        return all(result.passed is not False for result in self.results)


def _judged(name: str, statistic: str, p_value: float, alpha: float, detail: str) -> CheckResult:
    return CheckResult(name, statistic, p_value, p_value >= alpha, detail)


def _byte_frequency(data: npt.NDArray[np.uint8], alpha: float) -> CheckResult:
    counts = np.bincount(data, minlength=256).astype(np.float64)
    expected = data.size / 256.0
    statistic = float(((counts - expected) ** 2).sum() / expected)
    return _judged(
        "byte frequency χ²",
        f"{statistic:.1f}",
        chi2_sf(statistic, 255),
        alpha,
        "counts of the 256 byte values vs uniform, 255 dof",
    )


def _ks_of_u(data: npt.NDArray[np.uint8], sample_count: int, alpha: float) -> CheckResult:
    rows = data.size // sample_count
    if rows < _MIN_KS_VALUES:
        return CheckResult(
            "KS of u (z-score)",
            "-",
            None,
            None,
            f"skipped: {rows} values of u; needs >= {_MIN_KS_VALUES} "
            f"(more bytes or a smaller --sample-count)",
        )
    u = zscore_u(data[: rows * sample_count].reshape(rows, sample_count))
    statistic, p_value = ks_uniform(u)
    return _judged(
        "KS of u (z-score)",
        f"D={statistic:.4f}",
        p_value,
        alpha,
        f"{rows} values of u = Φ(z) from {sample_count}-byte means vs Uniform(0, 1)",
    )


def _runs(data: npt.NDArray[np.uint8], alpha: float) -> CheckResult:
    # NIST SP 800-22 §2.3 runs test on the bit stream.
    bits = np.unpackbits(data)
    n = int(bits.size)
    ones = float(bits.mean())
    if abs(ones - 0.5) >= 2.0 / math.sqrt(n):
        return CheckResult(
            "runs (bits)",
            f"π={ones:.4f}",
            0.0,
            False,
            "SP 800-22 §2.3: the proportion of ones fails the frequency prerequisite",
        )
    runs = 1 + int(np.count_nonzero(bits[1:] != bits[:-1]))
    spread = ones * (1.0 - ones)
    p_value = math.erfc(abs(runs - 2.0 * n * spread) / (2.0 * math.sqrt(2.0 * n) * spread))
    return _judged(
        "runs (bits)", f"{runs}", p_value, alpha, "SP 800-22 §2.3 number of runs of equal bits"
    )


def _serial_correlation(data: npt.NDArray[np.uint8], alpha: float) -> CheckResult:
    x = data.astype(np.float64)
    x -= x.mean()
    denominator = float(x @ x)
    r = float(x[1:] @ x[:-1]) / denominator if denominator > 0 else 1.0
    z = r * math.sqrt(data.size)
    return _judged(
        "serial correlation",
        f"r={r:+.5f}",
        normal_two_sided_p(z),
        alpha,
        "lag-1 correlation of bytes; r·√n ~ N(0, 1) under independence",
    )


def run_battery(
    source: EntropySource,
    n_bytes: int,
    *,
    sample_count: int = 1024,
    alpha: float = 0.001,
    chunk_bytes: int = 1 << 16,
    cutoffs: HealthTestCutoffs | None = None,
    progress: Callable[[int], None] | None = None,
) -> BatteryReport:
    """Fetch ``n_bytes`` from ``source`` in chunks and run every test on them.

    Args:
        source: The source under test (used as is, no fallback).
        n_bytes: Bytes to test, at least 256.
        sample_count: Bytes per value of u for the KS test.
        alpha: Significance level of each test.
        chunk_bytes: Bytes per fetch.
        cutoffs: Health-test cutoffs; the module defaults when None.
        progress: Called with the number of bytes of each chunk as it arrives.

    Raises:
        EntropyConfigError: an argument out of range.
        EntropyUnavailableError: the source failed (a health-tested source
            raises `HealthTestFailure` from its own tests).
    """
    if n_bytes < 256:
        raise EntropyConfigError(f"bytes={n_bytes} is too few for the battery; allowed >= 256")
    if sample_count < 1:
        raise EntropyConfigError(f"sample_count={sample_count} must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise EntropyConfigError(f"alpha={alpha} is outside the allowed range (0, 1)")
    if chunk_bytes < 1:
        raise EntropyConfigError(f"chunk_bytes={chunk_bytes} must be >= 1")
    monitor = HealthMonitor(cutoffs)
    repetition_failures = proportion_failures = 0
    buffer = np.empty(n_bytes, dtype=np.uint8)
    fetch_ns = 0
    done = 0
    while done < n_bytes:
        size = min(chunk_bytes, n_bytes - done)
        started = time.perf_counter_ns()
        chunk = source.fetch(size).data
        fetch_ns += time.perf_counter_ns() - started
        array = np.frombuffer(chunk, dtype=np.uint8)
        buffer[done : done + size] = array
        before = monitor.repetition_failures
        try:
            monitor.test_block(array)
        except HealthTestFailure:
            if monitor.repetition_failures > before:
                repetition_failures += 1
            else:
                proportion_failures += 1
        done += size
        if progress is not None:
            progress(size)
    limits = monitor.cutoffs
    results = (
        _byte_frequency(buffer, alpha),
        _ks_of_u(buffer, sample_count, alpha),
        _runs(buffer, alpha),
        _serial_correlation(buffer, alpha),
        CheckResult(
            "repetition count (SP 800-90B)",
            f"{repetition_failures} failures",
            None,
            repetition_failures == 0,
            f"no run of {limits.repetition_cutoff} identical bytes "
            f"(α={limits.false_alarm_rate:.3g}, H={limits.min_entropy_per_byte} bits/byte)",
        ),
        CheckResult(
            "adaptive proportion (SP 800-90B)",
            f"{proportion_failures} failures",
            None,
            proportion_failures == 0,
            f"no byte {limits.proportion_cutoff}+ times in a {limits.window_size}-byte window",
        ),
        CheckResult(
            "throughput",
            f"{n_bytes / max(fetch_ns, 1) * 1e3:.2f} MB/s",
            None,
            None,
            f"{n_bytes} bytes in {fetch_ns / 1e9:.3f} s of fetch time",
        ),
    )
    return BatteryReport(source=source.name, n_bytes=n_bytes, alpha=alpha, results=results)
