"""One fetch of the client: its deadline, retries, split requests and breaker verdict.

The rules (the knobs are `GrpcSettings` fields):

- The fetch has one deadline, ``grpc_timeout_ms`` after it starts, used exactly as
  written: every request and retry of the fetch shares it, and nothing fails the fetch
  for slowness before it. A slow but healthy server is waited for.
- A dead server fails fast without waiting for the deadline: a refused or lost
  connection is a ``transport`` failure at once (calls are fail-fast, never
  wait-for-ready), which rebuilds the channel and is retried up to
  ``grpc_retry_count`` times within the deadline.
- A fetch larger than ``grpc_max_bytes_per_request`` is split into requests of at most
  that size, sent one after another, and their payloads are joined in order. A fetch of
  rows (one per token) splits at row boundaries, and each request carries its own row
  count, so the server's audit log digests exactly the rows the records digest. Only a
  single row larger than the limit is split inside the row (its requests carry
  ``rows=0``); its record's digest then matches no log line (README, "Auditing entropy").
- The circuit breaker hears one verdict per fetch, whatever the attempts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from qr_grpc._address import GrpcAddress
from qr_grpc._bidi import BidiSession
from qr_grpc._breaker import CircuitBreaker, CircuitState
from qr_grpc._errors import CircuitOpenError, GrpcEntropyUnavailableError
from qr_grpc._failure import FetchFailure, check_length
from qr_grpc._loop import LoopStoppedError, LoopThread
from qr_grpc._proto.entropy_service_pb2 import EntropyResponse
from qr_grpc._settings import GrpcSettings
from qr_grpc._transport import AioTransport

__all__ = ["LOOP_GRACE_S", "Fetched", "Fetcher", "hint_for"]

logger = logging.getLogger("qr_grpc.source")

# Extra seconds the calling thread waits beyond a request's own timeout before it stops
# trusting the event loop; the coroutine enforces the real deadline.
LOOP_GRACE_S = 2.0


def hint_for(failure: FetchFailure, settings: GrpcSettings) -> str:
    """What the user can change for a failure the server or the connection reported."""
    if failure.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return (
            "; check QR_GRPC_API_KEY and QR_GRPC_API_KEY_HEADER "
            f"(now {settings.grpc_api_key_header!r}) against the server's key"
        )
    if failure.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
        return (
            "; if the server allows fewer bytes per request than "
            f"QR_GRPC_MAX_BYTES_PER_REQUEST={settings.grpc_max_bytes_per_request}, "
            "lower it to the server's limit"
        )
    if failure.code == "UNIMPLEMENTED":
        return (
            "; the server does not serve the method: check QR_GRPC_MODE, "
            "QR_GRPC_METHOD_PATH and QR_GRPC_STREAM_METHOD_PATH"
        )
    return ""


@dataclass(frozen=True, slots=True)
class Fetched:
    """The outcome of one fetch: the joined payload and who served each row.

    Attributes:
        data: The payload, split requests joined in order.
        device_id: The server's device_id (of the first request).
        row_sequence_ids: Per row, the sequence id of the request that served it.
        row_generation_timestamps_ns: Per row, that request's generation time.
    """

    data: bytes
    device_id: str
    row_sequence_ids: tuple[int, ...]
    row_generation_timestamps_ns: tuple[int, ...]


def plan_requests(n: int, rows: int, chunk: int) -> list[tuple[int, int]]:
    """The ``(bytes, rows)`` of each request of a fetch of ``n`` bytes in ``rows`` rows.

    ``rows`` 0 means one row, sent as ``rows=0`` (what older clients send). Requests hold
    whole rows, as many as fit in ``chunk`` bytes; a row larger than ``chunk`` alone is
    split inside, each of its requests with ``rows=0``.
    """
    row_size = n // rows if rows > 0 else n
    if rows > 0 and row_size <= chunk:
        per = max(1, chunk // row_size)
        plan: list[tuple[int, int]] = []
        left = rows
        while left > 0:
            take = min(per, left)
            plan.append((take * row_size, take))
            left -= take
        return plan
    plan = []
    for _ in range(max(rows, 1)):
        offset = 0
        while offset < row_size:
            size = min(chunk, row_size - offset)
            plan.append((size, rows if size == n else 0))
            offset += size
    return plan


class Fetcher:
    """Runs fetches for `QuantumGrpcSource` (see the module docstring for the rules).

    Args:
        settings: The client settings.
        address: The parsed server address (for messages).
        transport: The grpc.aio transport.
        loop: The background loop the transport runs on.
        breaker: The circuit breaker guarding the server.
        is_closed: Whether the owning source was closed (checked between requests).
    """

    def __init__(
        self,
        settings: GrpcSettings,
        address: GrpcAddress,
        transport: AioTransport,
        loop: LoopThread,
        breaker: CircuitBreaker,
        *,
        is_closed: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._address = address
        self._transport = transport
        self._loop = loop
        self._breaker = breaker
        self._is_closed = is_closed
        self._deadline_s = settings.grpc_timeout_ms / 1000.0
        self._chunk = settings.grpc_max_bytes_per_request
        self._bidi: BidiSession | None = None

    def fetch(self, n: int, rows: int = 0) -> Fetched:
        """Fetch exactly n > 0 bytes within the deadline.

        Args:
            n: Bytes of the fetch.
            rows: How the bytes split into rows (0: one row); must divide n.

        Raises:
            CircuitOpenError: The breaker refused the fetch.
            GrpcEntropyUnavailableError: The fetch failed or the source is closed.
        """
        self._raise_if_closed()
        if not self._breaker.allow_request():
            raise CircuitOpenError(
                f"quantum_grpc circuit breaker is {self._breaker.state.value} for "
                f"{self._address} after {self._breaker.consecutive_failures} consecutive "
                f"failed fetches; next probe in {self._breaker.retry_after_s():.2f} s"
            )
        state_before = self._breaker.state
        started = time.monotonic()
        deadline = started + self._deadline_s
        try:
            plan = plan_requests(n, rows, self._chunk)
            parts = [self._request(size, n, deadline, part_rows) for size, part_rows in plan]
        except GrpcEntropyUnavailableError as error:
            self._breaker.record_failure()
            self._log_transition(state_before, str(error))
            raise
        except BaseException:
            # An interrupt or a bug: the outcome is unknown, and the half-open probe slot
            # must not stay taken forever.
            self._breaker.record_failure()
            raise
        self._breaker.record_success(time.monotonic() - started, n)
        self._log_transition(state_before, "")
        data = parts[0].data if len(parts) == 1 else b"".join(part.data for part in parts)
        sequence_ids: list[int] = []
        generated: list[int] = []
        row_size = n // rows if rows > 0 else n
        offset = 0
        for (size, _), part in zip(plan, parts, strict=True):
            # Whole rows each; a row split inside takes the ids of its first request.
            count = size // row_size if size >= row_size else int(offset % row_size == 0)
            sequence_ids.extend([part.sequence_id] * count)
            generated.extend([part.generation_timestamp_ns] * count)
            offset += size
        return Fetched(data, parts[0].device_id, tuple(sequence_ids), tuple(generated))

    def _raise_if_closed(self) -> None:
        if self._is_closed():
            raise GrpcEntropyUnavailableError(f"quantum_grpc source for {self._address} is closed")

    def _request(self, size: int, total: int, deadline: float, rows: int) -> EntropyResponse:
        """One request of ``size`` bytes, retried after transport failures until deadline."""
        attempts = 1 + self._settings.grpc_retry_count
        last: FetchFailure | None = None
        attempt = 0
        while attempt < attempts:
            self._raise_if_closed()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempt += 1
            try:
                return self.attempt(size, remaining, rows)
            except FetchFailure as failure:
                last = failure
                logger.debug(
                    "quantum_grpc attempt %d/%d for %d bytes failed (%s): %s",
                    attempt,
                    attempts,
                    size,
                    failure.kind,
                    failure.detail,
                )
                if failure.kind != "transport":
                    break
        split = f" (in requests of at most {self._chunk} bytes)" if total > self._chunk else ""
        if last is None or (last.kind == "transport" and attempt < attempts):
            cause = "deadline passed between attempts" if last is None else last.detail
            detail = f"no answer within the {self._settings.grpc_timeout_ms:g} ms deadline"
            raise GrpcEntropyUnavailableError(
                f"quantum_grpc {self._settings.grpc_mode} fetch of {total} bytes{split} from "
                f"{self._address} failed: {detail} (QR_GRPC_TIMEOUT_MS); last error: {cause}"
            )
        if last.kind == "timeout":
            cause = (
                f"no answer within the {self._settings.grpc_timeout_ms:g} ms deadline "
                f"(QR_GRPC_TIMEOUT_MS): {last.detail}"
            )
        else:
            cause = last.detail + hint_for(last, self._settings)
        raise GrpcEntropyUnavailableError(
            f"quantum_grpc {self._settings.grpc_mode} fetch of {total} bytes{split} from "
            f"{self._address} failed after {attempt} attempt(s): {cause}"
        )

    def attempt(self, n: int, timeout_s: float, rows: int = 0) -> EntropyResponse:
        """One request of n bytes in ``rows`` rows (0: one), on the configured mode, checked.

        Raises:
            FetchFailure: The attempt failed; ``kind`` says how.
        """
        try:
            return self._attempt_on_loop(n, timeout_s, rows)
        except LoopStoppedError:
            raise FetchFailure("transport", "source closed during the fetch") from None

    def _attempt_on_loop(self, n: int, timeout_s: float, rows: int) -> EntropyResponse:
        if self._settings.grpc_mode != "bidi_streaming":
            try:
                return self._loop.run(
                    self._transport.fetch(n, timeout_s, rows), timeout_s + LOOP_GRACE_S
                )
            except concurrent.futures.CancelledError:
                # close() cancels what is running on the loop.
                raise FetchFailure("transport", "fetch cancelled by close()") from None
            except concurrent.futures.TimeoutError:
                # The coroutine enforces the deadline; this is the loop itself not answering.
                raise FetchFailure(
                    "timeout", f"client event loop did not answer within {timeout_s:.3f} s"
                ) from None
        session = self._bidi
        if session is None or session.failure is not None:
            session = self._bidi = self._loop.run(self._transport.bidi_session())
        try:
            response = session.request(n, timeout_s, rows)
        except FetchFailure as failure:
            self._loop.run(self._transport.reset_after(failure, session.generation))
            raise
        check_length(response, n)
        return response

    def _log_transition(self, before: CircuitState, detail: str) -> None:
        after = self._breaker.state
        if after is before:
            return
        if after is CircuitState.OPEN:
            logger.warning(
                "circuit breaker opened for %s after %d consecutive failed fetches (%s); "
                "next probe in %.1f s",
                self._address,
                self._breaker.consecutive_failures,
                detail,
                self._settings.cb_recovery_window_s,
            )
        elif after is CircuitState.CLOSED:
            logger.info("circuit breaker closed for %s: server answers again", self._address)
