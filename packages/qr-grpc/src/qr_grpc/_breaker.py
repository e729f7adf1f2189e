"""A circuit breaker with an adaptive timeout, as pure logic driven by an injectable clock."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

from qr_grpc._errors import GrpcConfigError

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(str, Enum):
    """Where the breaker stands."""

    CLOSED = "closed"
    """Requests flow; failures are counted."""
    OPEN = "open"
    """Requests are refused until the recovery window has passed."""
    HALF_OPEN = "half_open"
    """One probe request is in flight; everything else is refused until it settles."""


class CircuitBreaker:
    """Rolling-P99 adaptive timeout plus a closed / open / half-open state machine.

    The adaptive timeout is ``max(min_timeout_ms, P99 × timeout_multiplier)`` over the last
    ``window_size`` latencies, capped by the caller's configured timeout. Requests that time
    out are recorded with the timeout they were given, so a server that slows down raises the
    P99 and the timeout follows it instead of failing forever at a stale budget.

    Each latency is stored with its request size. The P99 for a request of ``n`` bytes is
    taken over the window's latencies scaled up by ``n / size`` where the sample was
    smaller (never scaled down): a decode step with more rows asks for more bytes, and
    must not be timed out by the budget of a smaller one.

    After ``max_consecutive_failures`` failures in a row the breaker opens and refuses
    requests. Once ``recovery_window_s`` has passed, the next `allow_request` moves it to
    half-open and lets exactly that one probe through; every other caller is refused until
    the probe reports. A successful probe closes the breaker, a failed one reopens it for
    another recovery window.

    Thread-safe: one lock guards the state, which is touched once before and once after a
    request.

    Args:
        window_size: Latencies kept for the P99.
        min_timeout_ms: Floor of the adaptive timeout.
        timeout_multiplier: Factor applied to the P99.
        recovery_window_s: Seconds the breaker stays open before it lets a probe through.
        max_consecutive_failures: Failures in a row that open the breaker.
        clock: Monotonic clock in seconds (tests pass a fake one).

    Raises:
        GrpcConfigError: A threshold is outside its allowed range.
    """

    def __init__(
        self,
        *,
        window_size: int = 100,
        min_timeout_ms: float = 5.0,
        timeout_multiplier: float = 1.5,
        recovery_window_s: float = 10.0,
        max_consecutive_failures: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_size < 1:
            raise GrpcConfigError(f"cb_window_size={window_size!r} must be >= 1")
        if not min_timeout_ms > 0 or not math.isfinite(min_timeout_ms):
            raise GrpcConfigError(f"cb_min_timeout_ms={min_timeout_ms!r} must be a finite > 0")
        if not timeout_multiplier > 0 or not math.isfinite(timeout_multiplier):
            raise GrpcConfigError(
                f"cb_timeout_multiplier={timeout_multiplier!r} must be a finite > 0"
            )
        if not recovery_window_s >= 0 or not math.isfinite(recovery_window_s):
            raise GrpcConfigError(f"cb_recovery_window_s={recovery_window_s!r} must be >= 0")
        if max_consecutive_failures < 1:
            raise GrpcConfigError(
                f"cb_max_consecutive_failures={max_consecutive_failures!r} must be >= 1"
            )
        self._min_timeout_s = min_timeout_ms / 1000.0
        self._multiplier = timeout_multiplier
        self._recovery_window_s = recovery_window_s
        self._max_failures = max_consecutive_failures
        self._clock = clock
        # (latency_s, request_bytes) of the most recent requests.
        self._samples: deque[tuple[float, int]] = deque(maxlen=window_size)
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._entries = dict.fromkeys((s.value for s in CircuitState), 0)

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker past its window stays OPEN until asked)."""
        return self._state

    @property
    def transitions(self) -> dict[str, int]:
        """How often the breaker entered each state (by state value) since it was made."""
        with self._lock:
            return dict(self._entries)

    def _enter_locked(self, state: CircuitState) -> None:
        self._state = state
        self._entries[state.value] += 1

    @property
    def consecutive_failures(self) -> int:
        """Failures recorded since the last success."""
        return self._consecutive_failures

    @property
    def sample_count(self) -> int:
        """Latencies currently in the window."""
        return len(self._samples)

    def p99_s(self, n_bytes: int = 0) -> float | None:
        """Nearest-rank 99th percentile latency in seconds for a request of ``n_bytes``.

        Args:
            n_bytes: Request size; samples from smaller requests are scaled up to it.
                0 gives the P99 of the raw latencies.

        Returns:
            The P99, or None while the window is empty.
        """
        with self._lock:
            return self._p99_locked(n_bytes)

    def _p99_locked(self, n_bytes: int) -> float | None:
        if not self._samples:
            return None
        ordered = sorted(
            latency * n_bytes / size if n_bytes > size > 0 else latency
            for latency, size in self._samples
        )
        return ordered[math.ceil(0.99 * len(ordered)) - 1]

    def timeout_s(self, ceiling_s: float, n_bytes: int = 0) -> float:
        """The timeout for the next request.

        Args:
            ceiling_s: The configured timeout; the adaptive value never exceeds it.
            n_bytes: Size of the request (scales the latencies of smaller ones).

        Returns:
            ``min(ceiling_s, max(min_timeout, P99 × multiplier))``, or ``ceiling_s`` before
            any latency has been recorded.
        """
        with self._lock:
            p99 = self._p99_locked(n_bytes)
        if p99 is None:
            return ceiling_s
        return min(ceiling_s, max(self._min_timeout_s, p99 * self._multiplier))

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self._recovery_window_s - self._clock())

    def allow_request(self) -> bool:
        """Ask to send one request; every True must be followed by one record_* call.

        Returns:
            True when the request may go out (closed, or the single half-open probe).
        """
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.OPEN:
                if self._clock() - self._opened_at < self._recovery_window_s:
                    return False
                self._enter_locked(CircuitState.HALF_OPEN)
                return True
            # Half-open: the one probe is out; everyone else waits for its verdict.
            return False

    def record_success(self, latency_s: float, n_bytes: int = 0) -> None:
        """Record a request that delivered its bytes.

        Args:
            latency_s: Its round-trip time in seconds.
            n_bytes: Its size.
        """
        with self._lock:
            self._samples.append((latency_s, n_bytes))
            self._consecutive_failures = 0
            # A late success from before the breaker opened does not close it: only the
            # half-open probe may, so "exactly one probe" holds.
            if self._state is CircuitState.HALF_OPEN:
                self._enter_locked(CircuitState.CLOSED)

    def record_failure(self, timeout_latency_s: float | None = None, n_bytes: int = 0) -> None:
        """Record a failed request.

        Args:
            timeout_latency_s: For a timeout, the timeout it was given (counted as a latency
                sample); None for other failures, which say nothing about speed.
            n_bytes: Its size.
        """
        with self._lock:
            if timeout_latency_s is not None:
                self._samples.append((timeout_latency_s, n_bytes))
            self._consecutive_failures += 1
            # A failed probe reopens at once; a closed breaker waits for the threshold.
            if self._state is CircuitState.HALF_OPEN or (
                self._state is CircuitState.CLOSED
                and self._consecutive_failures >= self._max_failures
            ):
                self._open_locked()

    def _open_locked(self) -> None:
        self._enter_locked(CircuitState.OPEN)
        self._opened_at = self._clock()

    def snapshot(self) -> dict[str, object]:
        """State for health reports: state, failures, window size, raw P99 in ms."""
        with self._lock:
            p99 = self._p99_locked(0)
            return {
                "state": self._state.value,
                "consecutive_failures": self._consecutive_failures,
                "sample_count": len(self._samples),
                "p99_ms": None if p99 is None else p99 * 1000.0,
            }
