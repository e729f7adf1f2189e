"""`QuantumGrpcSource`: entropy from a gRPC server, registered as ``quantum_grpc``."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import ValidationError
from qr_entropy import EntropyBlock, EntropyFetch, EntropySettings, EntropySource

from qr_grpc._address import GrpcAddress, parse_address
from qr_grpc._breaker import CircuitBreaker, CircuitState
from qr_grpc._errors import CircuitOpenError, GrpcConfigError, GrpcEntropyUnavailableError
from qr_grpc._loop import LoopStoppedError, LoopThread
from qr_grpc._proto.entropy_service_pb2 import EntropyResponse
from qr_grpc._settings import GrpcSettings
from qr_grpc._transport import (
    AioTransport,
    BidiSession,
    FetchFailure,
    TransportConfig,
    check_length,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = ["QuantumGrpcSource"]

logger = logging.getLogger(__name__)

# Extra seconds the calling thread waits beyond a request's own timeout before it stops
# trusting the event loop; the coroutine enforces the real deadline.
_LOOP_GRACE_S = 2.0
# Budget of the live health probe in health_check().
_HEALTH_PROBE_TIMEOUT_S = 1.0
_EMPTY_RESPONSE = EntropyResponse(data=b"")


def _read_pem(label: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise GrpcConfigError(
            f"{label}={str(path)!r} cannot be read ({error.strerror or error}); "
            "give the path of a readable PEM file"
        ) from None


class QuantumGrpcSource(EntropySource):
    """Random bytes from a remote (quantum) entropy server over gRPC.

    Every fetch sends one request, only when bytes are needed (just in time): a decode
    step's `fetch_block(rows, n)` is one request for ``rows * n`` bytes and one response.
    The payload length is checked against the request, and the bytes pass the SP 800-90B
    continuous health tests of `EntropySource` (``health_tested`` is True).

    Transport modes (``grpc_mode``): ``unary`` (one GetEntropy call per fetch),
    ``server_streaming`` (one short StreamEntropy call per fetch) and ``bidi_streaming``
    (one StreamEntropy call for the whole session, responses matched to requests by
    ``sequence_id``). Addresses may be ``host:port``, ``[ipv6]:port`` or
    ``unix:///path``, plaintext or TLS, with an optional API key header.

    A circuit breaker (`CircuitBreaker`) sets each request's timeout from the rolling P99
    latency and refuses requests while the server keeps failing; a refused or failed
    fetch raises `EntropyUnavailableError`, so a `FallbackEntropySource` takes over and
    flags its bytes. Transport failures (connection refused or lost) rebuild the channel
    and are retried up to ``grpc_retry_count`` times; a server's refusal
    (unauthenticated, invalid argument), a timeout or a wrong-length payload is not.

    gRPC runs on grpc.aio in one background event loop thread, started by the first
    fetch; `close` stops it. Construction validates everything and reads the TLS files but
    opens no socket.

    Args:
        settings: Client settings; None reads them from ``QR_*`` variables and ``.env``.
        clock: Monotonic clock for the circuit breaker (tests pass a fake one).

    Raises:
        GrpcConfigError: An unparseable address, unreadable TLS file, incomplete client
            certificate pair, or a streaming mode without a stream method path.
    """

    health_tested: ClassVar[bool] = True

    def __init__(
        self,
        settings: GrpcSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings is None:
            settings = _load_settings({})
        self._settings = settings
        self._address: GrpcAddress = parse_address(settings.grpc_server_address)
        if settings.grpc_mode != "unary" and not settings.grpc_stream_method_path:
            raise GrpcConfigError(
                f"grpc_mode={settings.grpc_mode!r} needs grpc_stream_method_path, which is "
                "empty; set it or use grpc_mode='unary'"
            )
        cert, key = settings.grpc_tls_cert_file, settings.grpc_tls_key_file
        if (cert is None) != (key is None):
            raise GrpcConfigError(
                "grpc_tls_cert_file and grpc_tls_key_file must be set together for mutual "
                f"TLS (got cert={cert!s}, key={key!s})"
            )
        use_tls = settings.grpc_tls or settings.grpc_tls_ca_file is not None or cert is not None
        tls = (
            (
                _read_pem("grpc_tls_ca_file", settings.grpc_tls_ca_file),
                _read_pem("grpc_tls_key_file", key),
                _read_pem("grpc_tls_cert_file", cert),
            )
            if use_tls
            else None
        )
        api_key = settings.grpc_api_key.get_secret_value()
        metadata = ((settings.grpc_api_key_header, api_key),) if api_key else ()
        max_bytes = settings.grpc_max_message_bytes
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
            # Channels in a process share connections (subchannels) by default, and with
            # them the reconnect backoff of a failed one; a rebuilt channel must really
            # reconnect, so each channel keeps its own.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        server_name = settings.grpc_tls_server_name
        if not server_name and tls is not None and self._address.kind == "unix":
            # grpc would check the socket path against the certificate; a local socket's
            # certificate names the local host.
            server_name = "localhost"
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._timeout_ceiling_s = settings.grpc_timeout_ms / 1000.0
        self._breaker = CircuitBreaker(
            window_size=settings.cb_window_size,
            min_timeout_ms=settings.cb_min_timeout_ms,
            timeout_multiplier=settings.cb_timeout_multiplier,
            recovery_window_s=settings.cb_recovery_window_s,
            max_consecutive_failures=settings.cb_max_consecutive_failures,
            clock=clock,
        )
        self._transport = AioTransport(
            TransportConfig(
                target=self._address.target,
                mode=settings.grpc_mode,
                method_path=settings.grpc_method_path,
                stream_method_path=settings.grpc_stream_method_path,
                metadata=metadata,
                tls=tls,
                options=tuple(options),
            )
        )
        self._loop = LoopThread("qr-grpc-client")
        self._bidi: BidiSession | None = None
        self._closed = False

    # -- construction from settings -------------------------------------------

    @classmethod
    def from_settings(cls, settings: EntropySettings) -> Self:
        """Build the source from the shared settings plus `GrpcSettings`.

        `GrpcSettings` is read from the environment and ``.env``; a ``grpc_*`` or
        ``cb_*`` field explicitly set on ``settings`` (a subclass may carry them) wins.

        Args:
            settings: The shared entropy settings (size guard, health-test cutoffs).

        Raises:
            GrpcConfigError: A gRPC setting is invalid; the message names it.
        """
        overrides = {
            name: getattr(settings, name)
            for name in GrpcSettings.model_fields
            if name in settings.model_fields_set
        }
        source = cls(_load_settings(overrides))
        source.configure(settings)
        return source

    # -- EntropySource ----------------------------------------------------------

    @property
    def name(self) -> str:
        """``quantum_grpc``."""
        return "quantum_grpc"

    @property
    def settings(self) -> GrpcSettings:
        """The client settings in use."""
        return self._settings

    @property
    def address(self) -> GrpcAddress:
        """The parsed server address."""
        return self._address

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        """The breaker guarding the server (read its state and P99 for diagnostics)."""
        return self._breaker

    @property
    def is_available(self) -> bool:
        """False once closed, or while the breaker is open and not yet due for a probe."""
        if self._closed:
            return False
        return self._breaker.state is not CircuitState.OPEN or self._breaker.retry_after_s() == 0

    def get_random_bytes(self, n: int) -> bytes:
        """Fetch exactly n bytes with one request.

        Raises:
            EntropyConfigError: n is negative or above ``max_request_bytes``.
            EntropyUnavailableError: The server failed, timed out, sent the wrong number
                of bytes, or the circuit breaker is open.
        """
        total = self.check_request(1, n)
        return self._request(total).data

    def fetch(self, n: int) -> EntropyFetch:
        """Fetch n bytes with provenance carrying the server's device_id.

        Raises:
            EntropyConfigError: n is negative or above ``max_request_bytes``.
            EntropyUnavailableError: As for `get_random_bytes`, or a failed health test.
        """
        total = self.check_request(1, n)
        started_ns = time.monotonic_ns()
        response = self._request(total)
        block = self.seal_block(
            response.data,
            1,
            total,
            started_ns=started_ns,
            device_id=response.device_id,
            sequence_id=response.sequence_id,
            generation_timestamp_ns=response.generation_timestamp_ns,
        )
        return EntropyFetch(data=response.data, provenance=block.provenance)

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        """Fetch a (rows, n) uint8 block with one request of rows * n bytes.

        The block is a read-only view of the response payload (no copy).

        Raises:
            EntropyConfigError: A negative count or a total above ``max_request_bytes``.
            EntropyUnavailableError: As for `get_random_bytes`, or a failed health test.
        """
        total = self.check_request(rows, n)
        started_ns = time.monotonic_ns()
        response = self._request(total, rows)
        return self.seal_block(
            response.data,
            rows,
            n,
            started_ns=started_ns,
            device_id=response.device_id,
            sequence_id=response.sequence_id,
            generation_timestamp_ns=response.generation_timestamp_ns,
        )

    def _request(self, n: int, rows: int = 0) -> EntropyResponse:
        if self._closed:
            raise GrpcEntropyUnavailableError(f"quantum_grpc source for {self._address} is closed")
        if n == 0:
            # Nothing to generate; the protocol has no zero-byte request (servers reject it).
            return _EMPTY_RESPONSE
        attempts = 1 + self._settings.grpc_retry_count
        last: FetchFailure | None = None
        for attempt in range(1, attempts + 1):
            if self._closed:  # closed by another thread between attempts
                raise GrpcEntropyUnavailableError(
                    f"quantum_grpc source for {self._address} is closed"
                )
            if not self._breaker.allow_request():
                cause = f"; last error: {last.detail}" if last is not None else ""
                raise CircuitOpenError(
                    f"quantum_grpc circuit breaker is {self._breaker.state.value} for "
                    f"{self._address} after {self._breaker.consecutive_failures} consecutive "
                    f"failures; next probe in {self._breaker.retry_after_s():.2f} s{cause}"
                )
            state_before = self._breaker.state
            timeout_s = self._breaker.timeout_s(self._timeout_ceiling_s, n)
            started = time.perf_counter()
            try:
                response = self._attempt(n, timeout_s, rows)
            except FetchFailure as failure:
                last = failure
                logger.debug(
                    "quantum_grpc attempt %d/%d for %d bytes failed (%s): %s",
                    attempt,
                    attempts,
                    n,
                    failure.kind,
                    failure.detail,
                )
                self._breaker.record_failure(timeout_s if failure.kind == "timeout" else None, n)
                self._log_transition(state_before, failure.detail)
                if failure.kind == "transport" and attempt < attempts:
                    continue
                break
            except BaseException:
                # An interrupt (KeyboardInterrupt) or a bug: the request's outcome is unknown,
                # and the half-open probe slot must not stay taken forever.
                self._breaker.record_failure(None, n)
                raise
            self._breaker.record_success(time.perf_counter() - started, n)
            self._log_transition(state_before, "")
            return response
        assert last is not None  # the loop runs at least once and only breaks on failure
        raise GrpcEntropyUnavailableError(
            f"quantum_grpc {self._settings.grpc_mode} fetch of {n} bytes from "
            f"{self._address} failed after {attempt} attempt(s): {last.detail}"
        )

    def _attempt(self, n: int, timeout_s: float, rows: int) -> EntropyResponse:
        try:
            return self._attempt_on_loop(n, timeout_s, rows)
        except LoopStoppedError:
            raise FetchFailure("transport", "source closed during the fetch") from None

    def _attempt_on_loop(self, n: int, timeout_s: float, rows: int) -> EntropyResponse:
        if self._settings.grpc_mode != "bidi_streaming":
            try:
                return self._loop.run(
                    self._transport.fetch(n, timeout_s, rows), timeout_s + _LOOP_GRACE_S
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
                "circuit breaker opened for %s after %d consecutive failures (%s); "
                "next probe in %.1f s",
                self._address,
                self._breaker.consecutive_failures,
                detail,
                self._settings.cb_recovery_window_s,
            )
        elif after is CircuitState.CLOSED:
            logger.info("circuit breaker closed for %s: server answers again", self._address)

    def health_check(self) -> dict[str, object]:
        """Status including a live probe of the server's standard gRPC health service.

        The API key is never included, only whether one is configured.
        """
        status = super().health_check()
        status.update(
            {
                "address": str(self._address),
                "mode": self._settings.grpc_mode,
                "tls": self._transport.config.tls is not None,
                "authenticated": bool(self._transport.config.metadata),
                "circuit": self._breaker.snapshot(),
            }
        )
        if self._closed:
            status["server_status"] = "closed"
        else:
            status["server_status"] = self._loop.run(
                self._transport.health(_HEALTH_PROBE_TIMEOUT_S),
                _HEALTH_PROBE_TIMEOUT_S + _LOOP_GRACE_S,
            )
        return status

    def close(self) -> None:
        """Close the channel (and bidi stream) and stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop.started:
            self._loop.stop(self._transport.close())
        logger.debug("closed quantum_grpc source for %s", self._address)


def _load_settings(overrides: dict[str, object]) -> GrpcSettings:
    try:
        return GrpcSettings(**overrides)  # type: ignore[arg-type]  # validated by pydantic
    except ValidationError as error:
        problems = "; ".join(
            f"QR_{'_'.join(str(p) for p in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in error.errors()
        )
        raise GrpcConfigError(f"invalid gRPC settings: {problems}") from None
