"""A circuit breaker over whole fetches, as pure logic driven by an injectable clock."""

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
    """Closed / open / half-open state machine over fetches, plus a latency window.

    One fetch is one verdict: `allow_request` before it, then exactly one of
    `record_success` / `record_failure` after it, however many attempts (retries after a
    lost connection, requests of a split fetch) it took. So a blip that one retry absorbs
    counts nothing, and a fetch that failed after three attempts counts once.

    After ``max_consecutive_failures`` failed fetches in a row the breaker opens and
    refuses fetches. Once ``recovery_window_s`` has passed, the next `allow_request` moves
    it to half-open and lets exactly that one probe through; every other caller is refused
    until the probe reports. A successful probe closes the breaker, a failed one reopens it
    for another recovery window.

    The breaker sets no timeout: a fetch waits for its configured deadline (see
    ``grpc_timeout_ms``). The latencies of successful fetches are kept, with their sizes,
    for the P99 that health reports show.

    Thread-safe: one lock guards the state, which is touched once before and once after a
    fetch.

    Args:
        window_size: Latencies kept for the P99.
        recovery_window_s: Seconds the breaker stays open before it lets a probe through.
        max_consecutive_failures: Failed fetches in a row that open the breaker.
        clock: Monotonic clock in seconds (tests pass a fake one).

    Raises:
        GrpcConfigError: A threshold is outside its allowed range.
    """

    def __init__(
        self,
        *,
        window_size: int = 100,
        recovery_window_s: float = 10.0,
        max_consecutive_failures: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_size < 1:
            raise GrpcConfigError(f"cb_window_size={window_size!r} must be >= 1")
        if not recovery_window_s >= 0 or not math.isfinite(recovery_window_s):
            raise GrpcConfigError(f"cb_recovery_window_s={recovery_window_s!r} must be >= 0")
        if max_consecutive_failures < 1:
            raise GrpcConfigError(
                f"cb_max_consecutive_failures={max_consecutive_failures!r} must be >= 1"
            )
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

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self._recovery_window_s - self._clock())

    def allow_request(self) -> bool:
        """Ask to start one fetch; every True must be followed by one record_* call.

        Returns:
            True when the fetch may go out (closed, or the single half-open probe).
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
        """Record a fetch that delivered its bytes.

        Args:
            latency_s: Its time from start to last byte, in seconds.
            n_bytes: Its size.
        """
        with self._lock:
            self._samples.append((latency_s, n_bytes))
            self._consecutive_failures = 0
            # A late success from before the breaker opened does not close it: only the
            # half-open probe may, so "exactly one probe" holds.
            if self._state is CircuitState.HALF_OPEN:
                self._enter_locked(CircuitState.CLOSED)

    def record_failure(self) -> None:
        """Record a fetch that failed (after all its attempts)."""
        with self._lock:
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
