"""`QuantumGrpcSource`: entropy from a gRPC server, registered as ``quantum_grpc``."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, ClassVar

from qr_entropy import (
    EntropyBlock,
    EntropyFetch,
    EntropySettings,
    EntropySource,
    SourceCheck,
)

from qr_grpc._address import GrpcAddress, parse_address
from qr_grpc._breaker import CircuitBreaker, CircuitState
from qr_grpc._client_config import load_settings, transport_config
from qr_grpc._errors import GrpcEntropyUnavailableError
from qr_grpc._fetcher import LOOP_GRACE_S, Fetcher
from qr_grpc._loop import LoopThread
from qr_grpc._probe import probe
from qr_grpc._settings import GrpcSettings
from qr_grpc._transport import AioTransport

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = ["QuantumGrpcSource"]

logger = logging.getLogger(__name__)

# Budget of the live health probe in health_check().
_HEALTH_PROBE_TIMEOUT_S = 1.0


class QuantumGrpcSource(EntropySource):
    """Random bytes from a remote (quantum) entropy server over gRPC.

    Every fetch sends its request only when bytes are needed (just in time): a decode
    step's `fetch_block(rows, n)` is one request for ``rows * n`` bytes and one response,
    or, above ``grpc_max_bytes_per_request`` (the server's limit), several requests one
    after another whose payloads are joined. The payload length is checked against the
    request, and the bytes pass the SP 800-90B continuous health tests of `EntropySource`
    (``health_tested`` is True).

    Transport modes (``grpc_mode``): ``unary`` (one GetEntropy call per request),
    ``server_streaming`` (one short StreamEntropy call per request) and
    ``bidi_streaming`` (one StreamEntropy call for the whole session, responses matched
    to requests by ``sequence_id``, or in order for a server that does not echo it).
    Addresses may be ``host:port``, ``[ipv6]:port`` or ``unix:///path``, plaintext or
    TLS, with an optional API key header.

    Slow is told from dead: a fetch waits up to ``grpc_timeout_ms`` (exactly) for a slow
    server, while a refused or lost connection fails at once and is retried up to
    ``grpc_retry_count`` times on a rebuilt channel within that deadline. A server's
    refusal (unauthenticated, invalid argument) or a wrong-length payload is not
    retried. A failed fetch raises `EntropyUnavailableError`, so a
    `FallbackEntropySource` takes over and flags its bytes. The circuit breaker
    (`CircuitBreaker`) counts failed fetches, not attempts, and refuses fetches for
    ``cb_recovery_window_s`` once ``cb_max_consecutive_failures`` failed in a row.
    `check` makes one real request so that a wrong address or key shows at start-up.

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
            settings = load_settings({})
        self._settings = settings
        self._address: GrpcAddress = parse_address(settings.grpc_server_address)
        transport = transport_config(settings, self._address)
        self._breaker = CircuitBreaker(
            window_size=settings.cb_window_size,
            recovery_window_s=settings.cb_recovery_window_s,
            max_consecutive_failures=settings.cb_max_consecutive_failures,
            clock=clock,
        )
        self._transport = AioTransport(transport)
        self._loop = LoopThread("qr-grpc-client")
        self._closed = False
        self._fetcher = Fetcher(
            settings,
            self._address,
            self._transport,
            self._loop,
            self._breaker,
            is_closed=lambda: self._closed,
        )

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
        source = cls(load_settings(overrides))
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
        """Fetch exactly n bytes (one request, or several above the per-request limit).

        Raises:
            EntropyConfigError: n is negative or above ``max_request_bytes``.
            EntropyUnavailableError: The server failed, timed out, sent the wrong number
                of bytes, or the circuit breaker is open.
        """
        total = self.check_request(1, n)
        return self._request(total)[0]

    def fetch(self, n: int) -> EntropyFetch:
        """Fetch n bytes with provenance carrying the server's device_id.

        Raises:
            EntropyConfigError: n is negative or above ``max_request_bytes``.
            EntropyUnavailableError: As for `get_random_bytes`, or a failed health test.
        """
        total = self.check_request(1, n)
        started_ns = time.monotonic_ns()
        data, device_id = self._request(total)
        block = self.seal_block(data, 1, total, started_ns=started_ns, device_id=device_id)
        return EntropyFetch(data=data, provenance=block.provenance)

    def fetch_block(self, rows: int, n: int) -> EntropyBlock:
        """Fetch a (rows, n) uint8 block with one request of rows * n bytes.

        Above ``grpc_max_bytes_per_request`` the fetch is split into several requests
        sent one after another. The block is a read-only view of the response payload
        (no copy when one request served it).

        Raises:
            EntropyConfigError: A negative count or a total above ``max_request_bytes``.
            EntropyUnavailableError: As for `get_random_bytes`, or a failed health test.
        """
        total = self.check_request(rows, n)
        started_ns = time.monotonic_ns()
        data, device_id = self._request(total)
        return self.seal_block(data, rows, n, started_ns=started_ns, device_id=device_id)

    def _request(self, n: int) -> tuple[bytes, str]:
        """The payload of a fetch of n bytes and the server's device_id."""
        if n == 0:
            if self._closed:
                raise GrpcEntropyUnavailableError(
                    f"quantum_grpc source for {self._address} is closed"
                )
            # Nothing to generate; the protocol has no zero-byte request (servers reject it).
            return b"", ""
        return self._fetcher.fetch(n)

    def check(self, timeout_s: float | None = None) -> SourceCheck:
        """Send one real 1-byte request and report what stands in the way of serving.

        Reports an unreachable server, a refused API key (UNAUTHENTICATED), a method the
        server does not serve, TLS trouble or a server that does not answer, each with
        the address and the setting to fix. The breaker is not touched.

        Args:
            timeout_s: Budget of the request; None uses ``grpc_timeout_ms``.
        """
        if self._closed:
            return SourceCheck(
                ok=False,
                source=self.name,
                detail=f"quantum_grpc source for {self._address} is closed",
                problem="closed",
            )
        budget = self._settings.grpc_timeout_ms / 1000.0 if timeout_s is None else timeout_s
        return probe(self._fetcher, self._settings, self._address, budget)

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
                _HEALTH_PROBE_TIMEOUT_S + LOOP_GRACE_S,
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
