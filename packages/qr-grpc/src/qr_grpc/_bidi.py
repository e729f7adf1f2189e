"""`BidiSession`: one long-lived StreamEntropy call that every fetch of a source shares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from typing import Any

import grpc
import grpc.aio

from qr_grpc._failure import FetchFailure, classify
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

__all__ = ["BidiSession"]

logger = logging.getLogger(__name__)

# How long a failed bidi write waits for the reader to learn the server's status.
_READER_GRACE_S = 1.0


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
                    classify(error, "bidi write")
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
            self._fail(classify(error, "bidi stream"))
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

    def request(self, n: int, timeout_s: float) -> EntropyResponse:
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
                    self._queue.put_nowait, (seq, EntropyRequest(bytes_needed=n, sequence_id=seq))
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
