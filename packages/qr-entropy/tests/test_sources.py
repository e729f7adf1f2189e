"""The built-in sources and the shared EntropySource guards."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from qr_entropy import (
    EntropyBlock,
    EntropyConfigError,
    EntropyFetch,
    EntropySettings,
    EntropySource,
    EntropyUnavailableError,
    HealthStatus,
    MockUniformSource,
    SystemEntropySource,
    TimingNoiseSource,
)

SIZES = [0, 1, 7, 31, 32, 33, 20480]


class CountingSource(EntropySource):
    """os.urandom that counts its reads, to prove fetch_block reads once."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    @property
    def name(self) -> str:
        return "counting"

    def get_random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        return os.urandom(n)


class WrongLengthSource(EntropySource):
    """Returns one byte too many or too few: a broken device."""

    def __init__(self, delta: int) -> None:
        self.delta = delta

    @property
    def name(self) -> str:
        return "wrong_length"

    def get_random_bytes(self, n: int) -> bytes:
        return b"\x01" * max(0, n + self.delta)


def _sources() -> list[EntropySource]:
    return [SystemEntropySource(), MockUniformSource(seed=1), TimingNoiseSource()]


@pytest.mark.parametrize("source", _sources(), ids=lambda s: s.name)
@pytest.mark.parametrize("n", SIZES)
def test_exact_byte_counts(source: EntropySource, n: int) -> None:
    assert len(source.get_random_bytes(n)) == n
    fetched = source.fetch(n)
    assert isinstance(fetched, EntropyFetch)
    assert isinstance(fetched.data, bytes)
    assert len(fetched.data) == n


@pytest.mark.parametrize(
    "source", [SystemEntropySource(), MockUniformSource(seed=2)], ids=lambda s: s.name
)
def test_large_request_is_exact(source: EntropySource) -> None:
    n = 8 * 1024 * 1024 + 3
    assert len(source.fetch(n).data) == n


def test_timing_noise_large_request_is_exact() -> None:
    n = 64 * 1024 + 5
    assert len(TimingNoiseSource().fetch(n).data) == n


@pytest.mark.parametrize("source", _sources(), ids=lambda s: s.name)
def test_fetch_block_shape_and_provenance(source: EntropySource) -> None:
    before = time.monotonic_ns()
    block = source.fetch_block(4, 33)
    assert isinstance(block, EntropyBlock)
    assert block.data.shape == (4, 33)
    assert block.data.dtype == np.uint8
    assert block.data.flags.c_contiguous
    assert not block.data.flags.writeable
    prov = block.provenance
    assert prov.source == source.name
    assert prov.is_fallback is False
    assert prov.fallback_reason == ""
    assert before <= prov.generated_at_ns <= time.monotonic_ns()
    assert prov.fetch_latency_ns >= 0
    expected = HealthStatus.OK if source.health_tested else HealthStatus.NOT_TESTED
    assert prov.health is expected


def test_fetch_block_is_one_read_of_rows_times_n() -> None:
    source = CountingSource()
    block = source.fetch_block(64, 20480)
    assert source.requests == [64 * 20480]
    assert block.data.shape == (64, 20480)
    assert source.fetch_block(0, 5).data.shape == (0, 5)
    assert source.fetch_block(3, 0).data.shape == (3, 0)


@pytest.mark.parametrize(("rows", "n"), [(1, -1), (-1, 1), (-5, -5)])
def test_negative_counts_are_config_errors(rows: int, n: int) -> None:
    source = SystemEntropySource()
    with pytest.raises(EntropyConfigError, match="negative; allowed range is"):
        source.fetch_block(rows, n)


def test_negative_n_names_value_and_range() -> None:
    with pytest.raises(EntropyConfigError, match=r"n=-3 is negative; allowed range is \[0, "):
        SystemEntropySource().fetch(-3)
    with pytest.raises(EntropyConfigError, match="n=-3"):
        SystemEntropySource().get_random_bytes(-3)


@pytest.mark.parametrize("bad", [1.5, "8", True, None])
def test_non_integer_n_is_rejected(bad: object) -> None:
    with pytest.raises(EntropyConfigError, match="must be an int"):
        SystemEntropySource().fetch(bad)  # type: ignore[arg-type]


def test_absurd_n_over_configured_maximum() -> None:
    source = SystemEntropySource.from_settings(EntropySettings(max_request_bytes=1000))
    assert len(source.fetch(1000).data) == 1000
    with pytest.raises(EntropyConfigError, match=r"1001 bytes exceeds max_request_bytes=1000"):
        source.fetch(1001)
    with pytest.raises(EntropyConfigError, match=r"rows=11 x n=100 = 1100 bytes"):
        source.fetch_block(11, 100)


def test_default_maximum_rejects_a_typo_sized_request() -> None:
    with pytest.raises(EntropyConfigError, match="exceeds max_request_bytes"):
        MockUniformSource(seed=0).fetch(10**12)


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_length_is_a_source_failure(delta: int) -> None:
    source = WrongLengthSource(delta)
    with pytest.raises(EntropyUnavailableError, match="wrong-length read is a source failure"):
        source.fetch(10)
    with pytest.raises(EntropyUnavailableError, match=f"returned {40 + delta} bytes"):
        source.fetch_block(4, 10)


def test_non_bytes_result_is_a_source_failure() -> None:
    class ListSource(EntropySource):
        name = "list"  # type: ignore[assignment]

        def get_random_bytes(self, n: int) -> bytes:
            return [0] * n  # type: ignore[return-value]

    with pytest.raises(EntropyUnavailableError, match="returned list, not bytes"):
        ListSource().fetch(3)


def test_get_random_float64_shapes_and_range() -> None:
    source = MockUniformSource(seed=3)
    values = source.get_random_float64((3, 4))
    assert values.shape == (3, 4)
    assert values.dtype == np.float64
    assert source.get_random_float64(0).shape == (0,)
    out = np.empty(5)
    assert source.get_random_float64(5, out=out) is out
    many = source.get_random_float64(200_000)
    assert many.min() >= 0.0
    assert many.max() < 1.0
    # 53-bit draws: every value is a multiple of 2**-53
    assert np.all(many * 2.0**53 == np.floor(many * 2.0**53))
    from scipy import stats

    assert stats.kstest(many, "uniform").pvalue > 1e-4


def test_get_random_float64_rejects_bad_out_and_shape() -> None:
    source = SystemEntropySource()
    with pytest.raises(EntropyConfigError, match="expected shape"):
        source.get_random_float64((2, 2), out=np.empty(4))
    with pytest.raises(EntropyConfigError, match="dtype float64"):
        source.get_random_float64(4, out=np.empty(4, dtype=np.float32))
    with pytest.raises(EntropyConfigError, match="negative dimension"):
        source.get_random_float64((2, -1))


def test_health_check_reports_status() -> None:
    system = SystemEntropySource().health_check()
    assert system["source"] == "system"
    assert system["health"] == "not_tested"
    assert system["health_tested"] is False
    timing = TimingNoiseSource()
    assert timing.health_check()["health"] == "not_tested"
    timing.fetch(64)
    status = timing.health_check()
    assert status["health"] == "ok"
    assert status["samples_tested"] == 64
    assert isinstance(status["raw_delta_health"], dict)
    mock = MockUniformSource(seed=5, mean_shift=1.0).health_check()
    assert mock["seed"] == 5
    assert mock["mean_shift"] == 1.0


def test_sources_are_context_managers_and_available() -> None:
    with SystemEntropySource() as source:
        assert source.is_available
        assert source.device_id == ""
    assert TimingNoiseSource().is_available


def test_from_settings_applies_shared_guards() -> None:
    settings = EntropySettings(
        max_request_bytes=4096, health_false_alarm_rate=2.0**-20, health_min_entropy_per_byte=8.0
    )
    source = TimingNoiseSource.from_settings(settings)
    assert source.max_request_bytes == 4096
    assert source.health_monitor.cutoffs.repetition_cutoff == 1 + 20 // 8 + 1
    assert source.raw_monitor.cutoffs.false_alarm_rate == 2.0**-20


def test_timing_noise_rejects_bad_entropy_claim() -> None:
    with pytest.raises(EntropyConfigError, match=r"min_entropy_per_read=0.1 is outside \[0.25, 8"):
        TimingNoiseSource(min_entropy_per_read=0.1)


def test_timing_noise_bytes_look_uniform() -> None:
    from scipy import stats

    data = np.frombuffer(TimingNoiseSource().fetch(64 * 1024).data, dtype=np.uint8)
    counts = np.bincount(data, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-5


def test_stuck_clock_fails_timing_noise_health_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real clock cannot be made to stop here, so the timer is replaced by one
    # that advances by exactly 100 ns per read: no jitter at all.
    from qr_entropy import HealthTestFailure
    from qr_entropy.sources import _timing

    ticks = iter(range(0, 10**12, 100))
    monkeypatch.setattr(_timing.time, "perf_counter_ns", lambda: next(ticks))
    source = TimingNoiseSource()
    with pytest.raises(HealthTestFailure, match="repetition count test failed"):
        source.fetch(64)
    assert source.health_check()["raw_delta_health"]["repetition_failures"] == 1  # type: ignore[index]
