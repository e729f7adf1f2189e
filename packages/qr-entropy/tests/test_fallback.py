"""FallbackEntropySource: delegation, flagging, counting, error propagation."""

from __future__ import annotations

import logging

import pytest
from qr_entropy import (
    EntropyConfigError,
    EntropySource,
    EntropyUnavailableError,
    FallbackEntropySource,
    HealthStatus,
    HealthTestFailure,
    MockUniformSource,
    SystemEntropySource,
)


class ScriptedSource(EntropySource):
    """Fails on the calls listed in ``fail_on`` (0-based) with the given error."""

    health_tested = True

    def __init__(self, fail_on: set[int], error: Exception | None = None) -> None:
        self.fail_on = fail_on
        self.error = error or EntropyUnavailableError("device unplugged")
        self.calls = 0
        self.closed = False

    @property
    def name(self) -> str:
        return "scripted"

    def get_random_bytes(self, n: int) -> bytes:
        call = self.calls
        self.calls += 1
        if call in self.fail_on:
            raise self.error
        return MockUniformSource(seed=call).get_random_bytes(n)

    def close(self) -> None:
        self.closed = True


def test_primary_serves_while_it_works() -> None:
    primary = ScriptedSource(set())
    source = FallbackEntropySource(primary, SystemEntropySource())
    fetched = source.fetch(16)
    assert fetched.data == MockUniformSource(seed=0).get_random_bytes(16)
    assert fetched.provenance.source == "scripted"
    assert fetched.provenance.is_fallback is False
    assert fetched.provenance.health is HealthStatus.OK
    assert source.fallback_count == 0
    assert source.name == "scripted+fallback:system"


def test_fallback_fetch_is_flagged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    source = FallbackEntropySource(ScriptedSource({0}), MockUniformSource(seed=3))
    with caplog.at_level(logging.WARNING):
        fetched = source.fetch(16)
    assert fetched.data == MockUniformSource(seed=3).get_random_bytes(16)
    prov = fetched.provenance
    assert prov.is_fallback is True
    assert prov.source == "mock_uniform"
    assert prov.fallback_reason == "EntropyUnavailableError: device unplugged"
    assert prov.health is HealthStatus.NOT_TESTED
    assert source.fallback_count == 1
    assert "serving from fallback 'mock_uniform'" in caplog.text


def test_later_primary_success_does_not_hide_the_earlier_fallback() -> None:
    source = FallbackEntropySource(ScriptedSource({1, 3}), SystemEntropySource())
    flags = [source.fetch(8).provenance.is_fallback for _ in range(5)]
    assert flags == [False, True, False, True, False]
    assert source.fallback_count == 2
    status = source.health_check()
    assert status["fallback_count"] == 2
    assert status["last_fallback_reason"] == "EntropyUnavailableError: device unplugged"
    assert isinstance(status["last_fallback_at_ns"], int)
    assert status["last_fallback_at_ns"] > 0
    assert status["primary"]["source"] == "scripted"  # type: ignore[index]


def test_block_fallback_is_flagged() -> None:
    source = FallbackEntropySource(ScriptedSource({0}), SystemEntropySource())
    block = source.fetch_block(4, 8)
    assert block.data.shape == (4, 8)
    assert block.provenance.is_fallback is True
    assert block.provenance.source == "system"
    ok = source.fetch_block(4, 8)
    assert ok.provenance.is_fallback is False
    assert source.fallback_count == 1


def test_health_test_failure_engages_fallback() -> None:
    class StuckSource(ScriptedSource):
        def get_random_bytes(self, n: int) -> bytes:
            return bytes(n)

    source = FallbackEntropySource(StuckSource(set()), SystemEntropySource())
    block = source.fetch_block(2, 512)
    assert block.provenance.is_fallback is True
    assert block.provenance.fallback_reason.startswith("HealthTestFailure: repetition count")
    # The fallback's bytes are fine, but the token they choose must not read as healthy.
    assert block.provenance.health is HealthStatus.FAILED
    assert source.health_check()["primary"]["health"] == "failed"  # type: ignore[index]


def test_an_unavailable_primary_keeps_the_fallbacks_own_health() -> None:
    source = FallbackEntropySource(ScriptedSource({0}), SystemEntropySource())
    prov = source.fetch_block(1, 64).provenance
    assert prov.is_fallback
    assert prov.health is HealthStatus.NOT_TESTED


def test_other_errors_propagate() -> None:
    source = FallbackEntropySource(
        ScriptedSource({0}, error=RuntimeError("bug in the driver")), SystemEntropySource()
    )
    with pytest.raises(RuntimeError, match="bug in the driver"):
        source.fetch(4)
    assert source.fallback_count == 0


def test_bad_arguments_are_not_fallbacks() -> None:
    source = FallbackEntropySource(ScriptedSource(set()), SystemEntropySource())
    with pytest.raises(EntropyConfigError, match="n=-1"):
        source.fetch(-1)
    with pytest.raises(EntropyConfigError, match="exceeds max_request_bytes"):
        source.fetch_block(10**6, 10**6)
    assert source.fallback_count == 0


def test_fallback_failure_propagates_with_the_primary_error_as_context() -> None:
    source = FallbackEntropySource(
        ScriptedSource({0}), ScriptedSource({0}, EntropyUnavailableError("fallback down too"))
    )
    with pytest.raises(EntropyUnavailableError, match="fallback down too") as info:
        source.fetch(4)
    assert isinstance(info.value.__context__, EntropyUnavailableError)
    assert source.fallback_count == 1


def test_get_random_bytes_and_float64_go_through_the_fallback() -> None:
    source = FallbackEntropySource(ScriptedSource({0, 1}), SystemEntropySource())
    assert len(source.get_random_bytes(9)) == 9
    assert source.get_random_float64(3).shape == (3,)
    assert source.fallback_count == 2


def test_close_closes_both_even_when_primary_raises() -> None:
    class BadClose(ScriptedSource):
        def close(self) -> None:
            raise OSError("close failed")

    fallback = ScriptedSource(set())
    source = FallbackEntropySource(BadClose(set()), fallback)
    with pytest.raises(OSError, match="close failed"):
        source.close()
    assert fallback.closed


def test_availability_is_either() -> None:
    class Down(ScriptedSource):
        @property
        def is_available(self) -> bool:
            return False

    assert FallbackEntropySource(Down(set()), SystemEntropySource()).is_available
    assert not FallbackEntropySource(Down(set()), Down(set())).is_available


def test_health_test_failure_is_an_unavailable_error() -> None:
    assert issubclass(HealthTestFailure, EntropyUnavailableError)
