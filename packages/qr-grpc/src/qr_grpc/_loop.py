"""One asyncio event loop on a background thread, so sync callers can drive grpc.aio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopStoppedError", "LoopThread"]

_T = TypeVar("_T")


class LoopStoppedError(RuntimeError):
    """`LoopThread.run` was called after `LoopThread.stop`."""


class LoopThread:
    """A lazily started event loop on a daemon thread.

    Nothing is started by the constructor: the thread appears on the first `run`, so that
    building a source (or importing this module) in a process that never fetches costs no
    thread. `stop` is final: a fetch racing a close must not start a new thread.

    Args:
        name: Thread name, shown in debuggers and thread dumps.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def started(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread is not None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._stopped:
                raise LoopStoppedError(f"event loop thread {self._name!r} was stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def _serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=_serve, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        """Run a coroutine on the loop and wait for its result from the calling thread.

        Args:
            coro: The coroutine; it must enforce its own deadlines.
            timeout_s: A last-resort bound on the wait (the coroutine is cancelled past it).

        Returns:
            The coroutine's result; its exception is re-raised here.

        Raises:
            LoopStoppedError: `stop` was called (the coroutine is closed unrun).
        """
        try:
            loop = self._ensure_loop()
        except LoopStoppedError:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError on 3.10
            future.cancel()
            raise

    def stop(self, cleanup: Coroutine[Any, Any, None] | None = None) -> None:
        """Run an optional cleanup coroutine, then stop the loop and join its thread.

        Idempotent; afterwards `run` raises `LoopStoppedError`.
        """
        with self._lock:
            self._stopped = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            if cleanup is not None:
                cleanup.close()  # never scheduled: close it so Python does not warn
            return
        if cleanup is not None:
            asyncio.run_coroutine_threadsafe(cleanup, loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
