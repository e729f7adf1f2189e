"""The grpc.aio side of the client: channel, the three transport modes, health probe.

Everything here runs on the source's background event loop. Failures come out as
`FetchFailure` with a kind that tells the source what to do next: a timeout feeds the
breaker a latency sample, a transport failure rebuilds the channel and may be retried, a
rejection or protocol error is final for this fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc._settings import GrpcMode

__all__ = ["AioTransport", "FailureKind", "FetchFailure", "TransportConfig"]

logger = logging.getLogger(__name__)

FailureKind = Literal["timeout", "transport", "rejected", "protocol"]

_HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
# Codes that mean the connection, not the server's judgement, failed: rebuild the channel.
# CANCELLED is what a call in flight sees when another fetch rebuilt the channel under it.
_TRANSPORT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class FetchFailure(Exception):  # noqa: N818 -- internal signal, converted by the source
    """One failed attempt, classified.

    Attributes:
        kind: ``timeout``, ``transport`` (rebuild channel, may retry), ``rejected`` (the
            server said no) or ``protocol`` (the answer was wrong, e.g. its length).
        detail: Human-readable cause, never containing credentials.
    """

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail


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


def _classify(error: grpc.aio.AioRpcError, what: str) -> FetchFailure:
    code = error.code()
    detail = f"{what}: {code.name} {error.details() or ''}".rstrip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FetchFailure("timeout", detail)
    if code in _TRANSPORT_CODES:
        return FetchFailure("transport", detail)
    return FetchFailure("rejected", detail)


class _BidiSession:
    """One long-lived StreamEntropy call shared by every fetch of the source.

    Requests carry increasing sequence ids; a reader task hands each response to the
    waiter with the same id, so concurrent fetches never receive each other's bytes.
    A server that does not echo ids (sequence_id 0) is answered in order, oldest first,
    which is what an ordered stream gives.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._pending: dict[int, asyncio.Future[EntropyResponse]] = {}
        self._write_lock = asyncio.Lock()
        self.failure: FetchFailure | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._fail(FetchFailure("transport", "bidi stream closed by the server"))
                    return
                seq = response.sequence_id
                if seq == 0 and self._pending:
                    seq = next(iter(self._pending))
                waiter = self._pending.pop(seq, None)
                if waiter is None or waiter.done():
                    # The fetch already timed out; its late bytes must not reach anyone else.
                    logger.debug("discarding late bidi response sequence_id=%d", seq)
                    continue
                waiter.set_result(response)
        except grpc.aio.AioRpcError as error:
            self._fail(_classify(error, "bidi stream"))
        except asyncio.CancelledError:
            self._fail(FetchFailure("transport", "bidi stream cancelled"))
            raise

    def _fail(self, failure: FetchFailure) -> None:
        self.failure = failure
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(failure)

    async def request(self, n: int, seq: int, timeout_s: float) -> EntropyResponse:
        if self.failure is not None:
            raise FetchFailure(self.failure.kind, self.failure.detail)
        waiter: asyncio.Future[EntropyResponse] = asyncio.get_running_loop().create_future()
        self._pending[seq] = waiter
        try:
            # The write is a few bytes and is not put under the timeout: cancelling a
            # write cancels the whole call, which would fail every other pending fetch.
            async with self._write_lock:
                try:
                    await self._call.write(EntropyRequest(bytes_needed=n, sequence_id=seq))
                except grpc.aio.AioRpcError as error:
                    raise _classify(error, "bidi write") from None
                except asyncio.InvalidStateError:
                    raise self.failure or FetchFailure(
                        "transport", "bidi stream already finished"
                    ) from None
            try:
                return await asyncio.wait_for(waiter, timeout_s)
            except asyncio.TimeoutError:
                raise FetchFailure(
                    "timeout", f"bidi response not received within {timeout_s * 1000:.1f} ms"
                ) from None
        finally:
            self._pending.pop(seq, None)

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


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
        self._health: Any = None
        self._bidi: _BidiSession | None = None
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
        self._health = channel.unary_unary(
            _HEALTH_CHECK_PATH,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._channel = channel
        self._generation += 1
        logger.debug("opened grpc channel target=%s mode=%s", cfg.target, cfg.mode)

    async def fetch(self, n: int, timeout_s: float) -> EntropyResponse:
        """Fetch exactly n bytes with one request.

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
        mode = self._config.mode
        seq = next(self._seq)
        try:
            if mode == "unary":
                response = await self._fetch_unary(n, seq, timeout_s)
            elif mode == "server_streaming":
                response = await self._fetch_server_streaming(n, seq, timeout_s)
            else:
                response = await self._fetch_bidi(n, seq, timeout_s)
        except FetchFailure as failure:
            # Rebuild on transport failures only, and only the channel this fetch used:
            # concurrent fetches failing together must not tear down each other's
            # replacement. A server's "no" (auth, bad argument) keeps the channel.
            if failure.kind == "transport" and generation == self._generation:
                logger.debug("rebuilding grpc channel after: %s", failure.detail)
                await self.reset()
            raise
        if len(response.data) != n:
            # ERRATA §11: a wrong length is a failure of the source, not a short sample.
            raise FetchFailure(
                "protocol",
                f"server returned {len(response.data)} bytes for a request of {n} bytes",
            )
        return response

    async def _fetch_unary(self, n: int, seq: int, timeout_s: float) -> EntropyResponse:
        try:
            response: EntropyResponse = await self._unary(
                EntropyRequest(bytes_needed=n, sequence_id=seq),
                timeout=timeout_s,
                metadata=self._config.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "unary call") from None
        return response

    async def _fetch_server_streaming(self, n: int, seq: int, timeout_s: float) -> EntropyResponse:
        call = self._stream(timeout=timeout_s, metadata=self._config.metadata)
        try:
            await call.write(EntropyRequest(bytes_needed=n, sequence_id=seq))
            await call.done_writing()
            response = await call.read()
            if response is grpc.aio.EOF:
                raise FetchFailure("protocol", "stream ended without a response")
            # Drain to the status so the short-lived stream ends cleanly on both sides.
            extra = await call.read()
            if extra is not grpc.aio.EOF:
                raise FetchFailure("protocol", "server sent more than one response")
        except grpc.aio.AioRpcError as error:
            raise _classify(error, "server-streaming call") from None
        except asyncio.InvalidStateError:
            # A write after the server already ended the call; read() has its status.
            try:
                await call.read()
            except grpc.aio.AioRpcError as error:
                raise _classify(error, "server-streaming call") from None
            raise FetchFailure("transport", "stream finished before the request") from None
        finally:
            call.cancel()  # no-op on a finished call; frees it on any failure path
        result: EntropyResponse = response
        return result

    async def _fetch_bidi(self, n: int, seq: int, timeout_s: float) -> EntropyResponse:
        session = self._bidi
        if session is None or session.failure is not None:
            if session is not None:
                await session.close()
            session = self._bidi = _BidiSession(self._stream(metadata=self._config.metadata))
        return await session.request(n, seq, timeout_s)

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
        self._unary = self._stream = self._health = None
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
