"""`BidiSession`: one long-lived StreamEntropy call that every fetch of a source shares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections import OrderedDict
from typing import Any

import grpc
import grpc.aio

from qr_grpc._failure import FetchFailure, classify
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

__all__ = ["BidiSession"]

logger = logging.getLogger(__name__)

# How long a failed bidi write waits for the reader to learn the server's status.
_READER_GRACE_S = 1.0
# Unanswered abandoned requests after which the stream is given up and reopened.
_MAX_ABANDONED = 64


class BidiSession:
    """One long-lived StreamEntropy call shared by every fetch of the source.

    Requests carry increasing sequence ids; a reader task hands each response to the
    waiter with the same id, so concurrent fetches never receive each other's bytes.
    The protocol lets a server leave field 2 alone (0) or fill it with ids of its own:
    a response whose id is not one this session sent is matched to the oldest
    request still waiting, which is what an ordered stream gives, and from then on the
    session matches every response that way. A request abandoned at its deadline keeps
    its place in that order (a tombstone), so its late answer is discarded instead of
    being handed to the next request.

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
        # Oldest first; None marks a request whose fetch gave up (its answer is dropped).
        self._pending: OrderedDict[int, concurrent.futures.Future[EntropyResponse] | None] = (
            OrderedDict()
        )
        self._abandoned = 0
        # None until the first response says whether the server echoes sequence ids.
        self._echoes: bool | None = None
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
                with self._lock:
                    waiter = self._match_locked(response.sequence_id)
                if waiter is None:
                    # That fetch already gave up; its late bytes must not reach anyone else.
                    logger.debug(
                        "discarding late bidi response sequence_id=%d", response.sequence_id
                    )
                    continue
                waiter.set_result(response)
        except grpc.aio.AioRpcError as error:
            self._fail(classify(error, "bidi stream"))
        except asyncio.CancelledError:
            self._fail(FetchFailure("transport", "bidi stream cancelled"))
            raise

    def _match_locked(self, seq: int) -> concurrent.futures.Future[EntropyResponse] | None:
        if self._echoes is not False and seq in self._pending:
            self._echoes = True
            waiter = self._pending.pop(seq)
        else:
            if self._echoes is not False:
                logger.debug(
                    "bidi server does not echo sequence_id (got %d); matching responses "
                    "to requests in order",
                    seq,
                )
                self._echoes = False
            if not self._pending:
                return None
            _, waiter = self._pending.popitem(last=False)
        if waiter is None:
            self._abandoned -= 1
        return waiter

    def _fail(self, failure: FetchFailure) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = failure
            pending, self._pending = self._pending, OrderedDict()
            self._abandoned = 0
        for waiter in pending.values():
            if waiter is not None:
                waiter.set_exception(failure.copy())

    def request(self, n: int, timeout_s: float, rows: int = 0) -> EntropyResponse:
        """Send one request on the stream and wait for its response (any thread but the loop's).

        ``rows`` is the request's row split (0: one row), for the server's audit log.

        Raises:
            FetchFailure: Timeout, or the stream failed (``transport`` / ``rejected``).
        """
        waiter: concurrent.futures.Future[EntropyResponse] = concurrent.futures.Future()
        with self._lock:
            if self.failure is not None:
                raise self.failure.copy()
            seq = next(self._seq)
            self._pending[seq] = waiter
            # Inside the lock so writes leave in sequence order (the FIFO fallback needs it).
            try:
                self._loop.call_soon_threadsafe(
                    self._queue.put_nowait,
                    (seq, EntropyRequest(bytes_needed=n, sequence_id=seq, rows=rows)),
                )
            except RuntimeError:  # the loop was closed under us (source closed meanwhile)
                self._pending.pop(seq, None)
                raise FetchFailure("transport", "client event loop stopped") from None
        try:
            return waiter.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise FetchFailure(
                "timeout", f"bidi response not received within {timeout_s * 1000:.1f} ms"
            ) from None
        finally:
            self._abandon(seq)

    def _abandon(self, seq: int) -> None:
        """Keep a request that gave up in the order as a tombstone (no-op once answered)."""
        with self._lock:
            if self._pending.get(seq) is None:
                return
            self._pending[seq] = None
            self._abandoned += 1
            too_many = self._abandoned > _MAX_ABANDONED
        if too_many:
            # A stream that answers nothing any more: let the next fetch open a new one.
            self._fail(FetchFailure("transport", "bidi stream stopped answering"))

    async def close(self) -> None:
        """Cancel the call and its tasks (on the loop)."""
        self._queue.put_nowait(None)
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
