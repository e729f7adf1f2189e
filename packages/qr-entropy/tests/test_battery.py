"""run_battery: the check command's statistics on good and bad streams."""

from __future__ import annotations

import pytest
from qr_entropy import EntropyConfigError, EntropySource, MockUniformSource, SystemEntropySource
from qr_entropy._battery import run_battery


class PatternSource(EntropySource):
    """Not health-tested itself, so the battery's own health tests must catch it."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern

    @property
    def name(self) -> str:
        return "pattern"

    def get_random_bytes(self, n: int) -> bytes:
        return (self.pattern * (n // len(self.pattern) + 1))[:n]


def _by_name(report: object) -> dict[str, object]:
    return {r.name: r for r in report.results}  # type: ignore[attr-defined]


def test_system_passes() -> None:
    report = run_battery(SystemEntropySource(), 1 << 19, sample_count=512)
    assert report.passed, report
    assert report.source == "system"
    rows = _by_name(report)
    assert rows["throughput"].passed is None  # type: ignore[attr-defined]
    assert rows["KS of u (z-score)"].p_value is not None  # type: ignore[attr-defined]


def test_biased_mock_fails_the_mean_sensitive_tests() -> None:
    report = run_battery(MockUniformSource(seed=2, mean_shift=1.0), 1 << 20, sample_count=1024)
    assert not report.passed
    rows = _by_name(report)
    assert rows["KS of u (z-score)"].passed is False  # type: ignore[attr-defined]


def test_stuck_source_fails_both_health_tests_and_the_statistics() -> None:
    report = run_battery(PatternSource(b"\x00"), 4096, chunk_bytes=1024)
    rows = _by_name(report)
    assert rows["repetition count (SP 800-90B)"].passed is False  # type: ignore[attr-defined]
    assert rows["byte frequency χ²"].passed is False  # type: ignore[attr-defined]
    assert rows["runs (bits)"].passed is False  # type: ignore[attr-defined]
    assert not report.passed


def test_repeating_pattern_fails_the_proportion_test() -> None:
    report = run_battery(PatternSource(bytes(range(0, 256, 16))), 8192)
    rows = _by_name(report)
    assert rows["adaptive proportion (SP 800-90B)"].passed is False  # type: ignore[attr-defined]
    assert rows["serial correlation"].passed is False  # type: ignore[attr-defined]


def test_ks_is_skipped_with_too_few_values() -> None:
    report = run_battery(SystemEntropySource(), 1024, sample_count=1024)
    assert _by_name(report)["KS of u (z-score)"].passed is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bytes": 10}, "bytes=10 is too few"),
        ({"sample_count": 0}, "sample_count=0"),
        ({"alpha": 1.0}, "alpha=1.0"),
        ({"chunk_bytes": 0}, "chunk_bytes=0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    args: dict[str, object] = {"n_bytes": 1024, **kwargs}
    with pytest.raises(EntropyConfigError, match=match):
        run_battery(SystemEntropySource(), **args)  # type: ignore[arg-type]
