"""The grpc.aio side of the client: the channel, the three transport modes, a health probe.

Everything here runs on the source's background event loop. Failures come out as
`FetchFailure` (see `qr_grpc._failure`); the bidi stream itself is `qr_grpc._bidi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from qr_grpc._bidi import BidiSession
from qr_grpc._failure import FetchFailure, check_length, classify
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc._settings import GrpcMode

__all__ = ["AioTransport", "TransportConfig"]

logger = logging.getLogger(__name__)

_HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """What the transport needs, already validated by the source.

    Attributes:
        target: grpc target string (``host:port``, ``[::1]:port``, ``unix:///path``).
        mode: Transport mode.
        method_path: Unary method, e.g. ``/qr_entropy.EntropyService/GetEntropy``.
        stream_method_path: Bidi method used by both streaming modes.
        metadata: Per-call metadata (the API key header, when set).
        tls: ``(root_certificates, private_key, certificate_chain)`` PEM bytes, or None for
            a plaintext channel.
        options: grpc channel arguments.
    """

    target: str
    mode: GrpcMode
    method_path: str
    stream_method_path: str
    metadata: tuple[tuple[str, str], ...]
    tls: tuple[bytes | None, bytes | None, bytes | None] | None
    options: tuple[tuple[str, Any], ...]


class AioTransport:
    """Channel plus the three transport modes, all just in time.

    ``unary`` sends one GetEntropy call per fetch. ``server_streaming`` opens a
    StreamEntropy call per fetch, sends one request, half-closes and reads the answer.
    ``bidi_streaming`` keeps one StreamEntropy call open for the session and sends one
    request per fetch on it. In every mode a request goes out only when a fetch asks.

    Args:
        config: Validated settings.
    """

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._channel: Any = None
        self._unary: Any = None
        self._stream: Any = None
        self._server_stream: Any = None
        self._health: Any = None
        self._bidi: BidiSession | None = None
        self._seq = itertools.count(1)
        self._generation = 0

    @property
    def config(self) -> TransportConfig:
        """The configuration this transport was built with."""
        return self._config

    def _ensure_channel(self) -> None:
        if self._channel is not None:
            return
        cfg = self._config
        if cfg.tls is None:
            channel = grpc.aio.insecure_channel(cfg.target, options=cfg.options)
        else:
            root, key, chain = cfg.tls
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=chain
            )
            channel = grpc.aio.secure_channel(cfg.target, credentials, options=cfg.options)
        self._unary = channel.unary_unary(
            cfg.method_path,
            request_serializer=EntropyRequest.SerializeToString,
            response_deserializer=EntropyResponse.FromString,
        )
        self._stream = channel.stream_stream(
            cfg.stream_method_path,
            request_serializer=EntropyRequest.SerializeToString,
            response_deserializer=EntropyResponse.FromString,
        )
        self._server_stream = channel.unary_stream(
            cfg.stream_method_path,
            request_serializer=EntropyRequest.SerializeToString,
            response_deserializer=EntropyResponse.FromString,
        )
        self._health = channel.unary_unary(
            _HEALTH_CHECK_PATH,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._channel = channel
        self._generation += 1
        logger.debug("opened grpc channel target=%s mode=%s", cfg.target, cfg.mode)

    async def fetch(self, n: int, timeout_s: float, rows: int = 0) -> EntropyResponse:
        """Fetch exactly n bytes with one unary or server-streaming request.

        Args:
            n: Bytes to ask for.
            timeout_s: Budget for this attempt.

        Returns:
            The server's response, its payload length already checked.

        Raises:
            FetchFailure: The attempt failed; ``kind`` says how.
        """
        self._ensure_channel()
        generation = self._generation
        try:
            if self._config.mode == "unary":
                response = await self._fetch_unary(n, timeout_s, rows)
            else:
                response = await self._fetch_server_streaming(n, timeout_s, rows)
        except FetchFailure as failure:
            await self.reset_after(failure, generation)
            raise
        check_length(response, n)
        return response

    async def bidi_session(self) -> BidiSession:
        """The live bidi session, opening the channel and a new stream when needed."""
        session = self._bidi
        if session is not None and session.failure is None:
            return session
        if session is not None:
            await session.close()
        self._ensure_channel()
        self._bidi = await BidiSession.open(self._stream, self._config.metadata, self._generation)
        return self._bidi

    async def reset_after(self, failure: FetchFailure, generation: int) -> None:
        """Rebuild after a transport failure of the channel ``generation``.

        Only transport failures rebuild, and only the channel the failed fetch used:
        concurrent fetches failing together must not tear down each other's replacement.
        A server's "no" (auth, bad argument), a timeout or a bad payload keeps the channel.
        """
        if failure.kind == "transport" and generation == self._generation:
            logger.debug("rebuilding grpc channel after: %s", failure.detail)
            await self.reset()

    async def _fetch_unary(self, n: int, timeout_s: float, rows: int) -> EntropyResponse:
        try:
            response: EntropyResponse = await self._unary(
                EntropyRequest(bytes_needed=n, sequence_id=next(self._seq), rows=rows),
                timeout=timeout_s,
                metadata=self._config.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise classify(error, "unary call") from None
        return response

    async def _fetch_server_streaming(self, n: int, timeout_s: float, rows: int) -> EntropyResponse:
        # One request then half-close, on the bidi method: on the wire that is exactly a
        # unary-stream call, so it is issued as one (request, metadata and half-close go
        # out in one batch, and a server that refuses the call reports its own status
        # instead of a write racing its close).
        call = self._server_stream(
            EntropyRequest(bytes_needed=n, sequence_id=next(self._seq), rows=rows),
            timeout=timeout_s,
            metadata=self._config.metadata,
        )
        try:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise FetchFailure("protocol", "stream ended without a response")
            # Drain to the status so the short-lived stream ends cleanly on both sides.
            if await call.read() is not grpc.aio.EOF:
                raise FetchFailure("protocol", "server sent more than one response")
        except grpc.aio.AioRpcError as error:
            raise classify(error, "server-streaming call") from None
        finally:
            call.cancel()  # no-op on a finished call; frees it on any failure path
        result: EntropyResponse = response
        return result

    async def health(self, timeout_s: float, service: str = "") -> str:
        """Ask the server's standard gRPC health service.

        Args:
            timeout_s: Budget for the probe.
            service: Service name to ask about; empty means the whole server.

        Returns:
            The serving status name (``SERVING``, ``NOT_SERVING``...), or
            ``unreachable: <code>`` / ``unimplemented`` when the probe itself failed.
        """
        self._ensure_channel()
        try:
            response = await self._health(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout_s,
                metadata=self._config.metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "unimplemented"
            return f"unreachable: {error.code().name}"
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name

    async def reset(self) -> None:
        """Drop the channel and any bidi session; the next fetch builds new ones."""
        self._generation += 1
        session, self._bidi = self._bidi, None
        channel, self._channel = self._channel, None
        self._unary = self._stream = self._server_stream = self._health = None
        if session is not None:
            await session.close()
        if channel is not None:
            await channel.close()
            logger.debug("closed grpc channel target=%s", self._config.target)

    async def close(self) -> None:
        """Close everything and cancel what is left on the loop."""
        await self.reset()
        current = asyncio.current_task()
        leftovers: Sequence[asyncio.Task[Any]] = [
            task for task in asyncio.all_tasks() if task is not current
        ]
        for task in leftovers:
            task.cancel()
        for task in leftovers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
