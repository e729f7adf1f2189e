"""The grpc.aio side of the client: channel, the three transport modes, health probe.

Everything here runs on the source's background event loop, except
`BidiSession.request`, which the fetching thread calls directly. Failures come out as
`FetchFailure` with a kind that tells the source what to do next: a timeout feeds the
breaker a latency sample, a transport failure rebuilds the channel and may be retried, a
rejection or protocol error is final for this fetch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc._settings import GrpcMode

__all__ = [
    "AioTransport",
    "BidiSession",
    "FailureKind",
    "FetchFailure",
    "TransportConfig",
    "check_length",
]

logger = logging.getLogger(__name__)

FailureKind = Literal["timeout", "transport", "rejected", "protocol"]

_HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
# Details grpc.aio gives a call whose write failed inside the library (not a server status).
_CORE_WRITE_ERROR = "Internal error from Core"
# How long a failed bidi write waits for the reader to learn the server's status.
_READER_GRACE_S = 1.0
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


def check_length(response: EntropyResponse, n: int) -> None:
    """Raise a protocol failure unless the payload has exactly n bytes (ERRATA §11)."""
    if len(response.data) != n:
        # A wrong length is a failure of the source, not a short sample.
        raise FetchFailure(
            "protocol", f"server returned {len(response.data)} bytes for a request of {n} bytes"
        )


def _classify(error: grpc.aio.AioRpcError, what: str) -> FetchFailure:
    code = error.code()
    detail = f"{what}: {code.name} {error.details() or ''}".rstrip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FetchFailure("timeout", detail)
    if code in _TRANSPORT_CODES:
        return FetchFailure("transport", detail)
    if code == grpc.StatusCode.INTERNAL and (error.details() or "").startswith(_CORE_WRITE_ERROR):
        # grpc.aio's own marker for a write that failed because the call had already
        # ended (e.g. the server closed the stream as the request went out): the
        # server's status is lost, the stream is gone, a new one may well work.
        return FetchFailure("transport", detail)
    return FetchFailure("rejected", detail)


class BidiSession:
    """One long-lived StreamEntropy call shared by every fetch of the source.

    Requests carry increasing sequence ids; a reader task hands each response to the
    waiter with the same id, so concurrent fetches never receive each other's bytes.
    A server that does not echo ids (sequence_id 0) is answered in order, oldest first,
    which is what an ordered stream gives.

    `request` is called from the fetching thread, not the loop: it queues the request for
    a writer task with one ``call_soon_threadsafe`` and waits on a
    ``concurrent.futures.Future`` that the reader task resolves. That is one wake-up each
    way and no task, asyncio future or timer per fetch, which is most of the client-side
    cost of a round trip (see benchmarks/bench_grpc.py). The timeout is the wait's.

    Build it with `open` on the loop.
    """

    def __init__(self, call: Any, generation: int) -> None:
        self._call = call
        self.generation = generation
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, EntropyRequest] | None] = asyncio.Queue()
        self._pending: dict[int, concurrent.futures.Future[EntropyResponse]] = {}
        self._lock = threading.Lock()  # orders sequence ids, pending entries and writes
        self._seq = itertools.count(1)
        self.failure: FetchFailure | None = None
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    @classmethod
    async def open(cls, stream: Any, metadata: Any, generation: int) -> BidiSession:
        """Start the call and its reader and writer tasks (on the loop)."""
        return cls(stream(metadata=metadata), generation)

    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._call.write(item[1])
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                # The call ended under the write (a refusal, a dead server). The reader
                # gets the server's own status; give it a moment before reporting ours.
                await asyncio.wait([self._reader], timeout=_READER_GRACE_S)
                detail = (
                    _classify(error, "bidi write")
                    if isinstance(error, grpc.aio.AioRpcError)
                    else FetchFailure("transport", "bidi stream finished")
                )
                self._fail(detail)
                return

    async def _read_loop(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    self._fail(FetchFailure("transport", "bidi stream closed by the server"))
                    return
                seq = response.sequence_id
                with self._lock:
                    if seq == 0 and self._pending:
                        seq = next(iter(self._pending))
                    waiter = self._pending.pop(seq, None)
                if waiter is None:
                    # That fetch already timed out; its late bytes must not reach anyone else.
                    logger.debug("discarding late bidi response sequence_id=%d", seq)
                    continue
                waiter.set_result(response)
        except grpc.aio.AioRpcError as error:
            self._fail(_classify(error, "bidi stream"))
        except asyncio.CancelledError:
            self._fail(FetchFailure("transport", "bidi stream cancelled"))
            raise

    def _fail(self, failure: FetchFailure) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = failure
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.set_exception(FetchFailure(failure.kind, failure.detail))

    def request(self, n: int, timeout_s: float, rows: int = 0) -> EntropyResponse:
        """Send one request on the stream and wait for its response (any thread but the loop's).

        Raises:
            FetchFailure: Timeout, or the stream failed (``transport`` / ``rejected``).
        """
        waiter: concurrent.futures.Future[EntropyResponse] = concurrent.futures.Future()
        with self._lock:
            if self.failure is not None:
                raise FetchFailure(self.failure.kind, self.failure.detail)
            seq = next(self._seq)
            self._pending[seq] = waiter
            # Inside the lock so writes leave in sequence order (the FIFO fallback needs it).
            try:
                self._loop.call_soon_threadsafe(
                    self._queue.put_nowait,
                    (seq, EntropyRequest(bytes_needed=n, sequence_id=seq, rows=rows)),
                )
            except RuntimeError:  # the loop was closed under us (source closed meanwhile)
                del self._pending[seq]
                raise FetchFailure("transport", "client event loop stopped") from None
        try:
            return waiter.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise FetchFailure(
                "timeout", f"bidi response not received within {timeout_s * 1000:.1f} ms"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(seq, None)

    async def close(self) -> None:
        """Cancel the call and its tasks (on the loop)."""
        self._queue.put_nowait(None)
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
            raise _classify(error, "unary call") from None
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
            raise _classify(error, "server-streaming call") from None
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
