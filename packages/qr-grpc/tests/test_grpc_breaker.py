"""The circuit breaker as pure logic, on a fake clock."""

from __future__ import annotations

import threading

import pytest
from qr_grpc import CircuitBreaker, CircuitState, GrpcConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs: float) -> CircuitBreaker:
    params: dict[str, float] = {
        "window_size": 100,
        "recovery_window_s": 10.0,
        "max_consecutive_failures": 3,
    }
    params.update(kwargs)
    return CircuitBreaker(clock=clock, **params)  # type: ignore[arg-type]


def test_p99_of_successful_fetches(clock: FakeClock) -> None:
    breaker = make(clock)
    assert breaker.p99_s() is None
    for i in range(1, 101):  # 1..100 ms: nearest-rank P99 is 99 ms
        breaker.record_success(i / 1000)
    assert breaker.p99_s() == pytest.approx(0.099)


def test_window_rolls(clock: FakeClock) -> None:
    breaker = make(clock, window_size=3)
    for latency in (1.0, 0.001, 0.002, 0.003):
        breaker.record_success(latency)
    assert breaker.sample_count == 3
    assert breaker.p99_s() == pytest.approx(0.003)


def test_failures_add_no_latency_sample(clock: FakeClock) -> None:
    breaker = make(clock, max_consecutive_failures=100)
    breaker.record_success(0.001)
    for _ in range(5):
        breaker.record_failure()
    assert breaker.sample_count == 1
    assert breaker.p99_s() == pytest.approx(0.001)


def test_larger_requests_scale_the_latencies_of_smaller_ones(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(10):
        breaker.record_success(0.010, 1000)
    assert breaker.p99_s(1000) == pytest.approx(0.010)
    assert breaker.p99_s(64_000) == pytest.approx(0.640)
    assert breaker.p99_s(10) == pytest.approx(0.010)  # never scaled down


def test_opens_after_consecutive_failures_and_a_success_resets_the_count(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success(0.001)
    assert breaker.consecutive_failures == 0
    for _ in range(2):
        breaker.record_failure()
        assert breaker.state is CircuitState.CLOSED
        assert breaker.allow_request()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow_request()
    assert breaker.retry_after_s() == pytest.approx(10.0)


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 9.99
    assert not breaker.allow_request()
    clock.now += 0.02
    assert breaker.retry_after_s() == 0.0
    assert breaker.allow_request()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert [breaker.allow_request() for _ in range(5)] == [False] * 5
    breaker.record_failure()  # the probe failed: open for another window
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow_request()
    clock.now += 10.0
    assert breaker.allow_request()
    breaker.record_success(0.002)  # the probe succeeded: closed
    assert breaker.state is CircuitState.CLOSED
    assert all(breaker.allow_request() for _ in range(5))


def test_half_open_probe_is_single_under_concurrency(clock: FakeClock) -> None:
    breaker = make(clock, recovery_window_s=0.0)
    for _ in range(3):
        breaker.record_failure()
    barrier = threading.Barrier(16)
    allowed: list[bool] = []

    def ask() -> None:
        barrier.wait()
        allowed.append(breaker.allow_request())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


def test_a_late_success_does_not_close_an_open_breaker(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.record_success(0.001)  # a request sent before the breaker opened
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow_request()


def test_snapshot(clock: FakeClock) -> None:
    breaker = make(clock)
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "sample_count": 0,
        "p99_ms": None,
    }
    breaker.record_success(0.002)
    assert breaker.snapshot()["p99_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("window_size", 0),
        ("recovery_window_s", -0.1),
        ("max_consecutive_failures", 0),
    ],
)
def test_bad_thresholds_are_rejected(clock: FakeClock, key: str, value: float) -> None:
    with pytest.raises(GrpcConfigError, match=key.replace("_", "_")):
        make(clock, **{key: value})


def test_transitions_count_each_entry_into_a_state(clock: FakeClock) -> None:
    breaker = make(clock, max_consecutive_failures=1)
    assert breaker.transitions == {"closed": 0, "open": 0, "half_open": 0}
    assert breaker.allow_request()
    breaker.record_failure()  # closed -> open
    clock.now += 11
    assert breaker.allow_request()  # open -> half_open
    breaker.record_failure()  # half_open -> open
    clock.now += 11
    assert breaker.allow_request()  # open -> half_open
    breaker.record_success(0.001)  # half_open -> closed
    assert breaker.state is CircuitState.CLOSED
    assert breaker.transitions == {"closed": 1, "open": 2, "half_open": 2}
