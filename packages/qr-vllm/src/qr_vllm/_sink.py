"""The durable records sink: JSON Lines written by a background thread.

The file is opened when the sink is built (the processor's start): a path that
cannot be written (a directory, a read-only place, a parent that cannot be
created) raises `RecordsPathError` then, with the path and the reason, and the
engine does not start. A file whose last line was cut (a crash, a full disk)
is cut back to its last whole line first.

The hot path only puts a `StepRecords` on a bounded queue; `write` never
raises. A writer thread, started on first use (never at import), turns each
step into JSON lines and writes them with one ``os.write`` on a file opened
with ``O_APPEND``: every step reaches the operating system as soon as the
thread gets to it, whole lines only, so a killed engine loses at most the
steps still queued and leaves no partial line. A write that fails part way
(``ENOSPC`` on a full disk, any ``OSError``) is rolled back to the step's
first byte, so the file keeps whole lines only; its records are dropped and
counted, and the error is logged at most once a minute (see ARCHITECTURE.md,
design note "Records on a bad disk"). A full queue drops the step, counts the
records and logs a warning; it never blocks sampling.

`flush` puts a marker on the same queue and waits for the writer to reach it.
A forked child inherits the sink but not its writer thread: right after the fork
the child forgets the parent's queue, file descriptor and thread, and starts its
own writer on its first write (vLLM builds engines in forked processes).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import Any, cast

from qr_vllm._errors import RecordsPathError
from qr_vllm._records import StepRecords

logger = logging.getLogger(__name__)

__all__ = ["ERROR_LOG_INTERVAL_S", "JsonlRecordSink", "open_records_file"]

_STOP = object()

#: Write errors are logged once, then at most once per this many seconds (with counts).
ERROR_LOG_INTERVAL_S = 60.0


def open_records_file(path: Path) -> int:
    """Open ``path`` for appending, creating it (and its parent); returns the descriptor.

    A last line without its newline (left by a crash or a full disk) is cut away,
    so that the next record starts a line of its own.

    Raises:
        RecordsPathError: The path is a directory, or it (or its parent) cannot be
            created or written; the message names the path and the reason.
    """
    if path.is_dir():
        raise RecordsPathError(
            f"QR_RECORDS_PATH={str(path)!r} is a directory; set it to a file path "
            "(the file is created if missing, appended to otherwise), or unset it to "
            "run without records"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise RecordsPathError(
            f"QR_RECORDS_PATH={str(path)!r} cannot be opened for writing: "
            f"{exc.strerror or exc} (errno {exc.errno}); choose a writable path, or "
            "unset it to run without records"
        ) from exc
    try:
        _cut_partial_line(fd, path)
    except OSError as exc:
        os.close(fd)
        raise RecordsPathError(
            f"QR_RECORDS_PATH={str(path)!r} cannot be repaired: {exc.strerror or exc}"
        ) from exc
    return fd


def _cut_partial_line(fd: int, path: Path) -> None:
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    # Find the last newline, reading backwards in chunks.
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    os.ftruncate(fd, keep)
    logger.warning(
        "records file %s ended in a partial line (%d bytes); cut back to its last whole line",
        path,
        size - keep,
    )


class _FlushMarker:
    """Put on the queue by `JsonlRecordSink.flush`; the writer sets ``reached``."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = threading.Event()


# Every sink of this process, for the fork handler below.
_SINKS: weakref.WeakSet[JsonlRecordSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(_SINKS):
        sink._forget_parent_writer()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class JsonlRecordSink:
    """Append records to a JSON Lines file from a background writer thread.

    Args:
        path: The file; it is created if missing and appended to otherwise.
        max_pending_steps: Steps that may wait for the writer before new ones
            are dropped (and counted).

    Raises:
        RecordsPathError: The file cannot be opened for writing (see `open_records_file`).
    """

    def __init__(self, path: Path | str, max_pending_steps: int = 4096) -> None:
        if max_pending_steps < 1:
            raise ValueError(f"max_pending_steps must be >= 1, got {max_pending_steps}")
        self.path = Path(path)
        self._max_pending = max_pending_steps
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_steps)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Opened now: a path that cannot be written stops the processor's start.
        self._fd: int | None = open_records_file(self.path)
        self._closed = False
        self.dropped_records = 0
        self.written_records = 0
        self.written_steps = 0
        self.write_errors = 0
        self._errors_unlogged = 0
        self._error_logged_at = float("-inf")
        self._finalizer: Any = weakref.finalize(self, _close_fd, self._fd)
        _SINKS.add(self)

    def write(self, step: StepRecords) -> bool:
        """Queue one step's records for writing; never blocks.

        Returns:
            False when the step was dropped (queue full or sink closed).
        """
        if len(step) == 0:
            return True
        if self._thread is None:
            try:
                self._start()
            except Exception:  # no file or no thread: records lost, engine untouched
                logger.exception("records writer for %s could not start", self.path)
                self._drop(len(step), "the writer could not start")
                return False
        if self._closed:
            self._drop(len(step), "the sink is closed")
            return False
        try:
            self._queue.put_nowait(step)
        except queue.Full:
            self._drop(len(step), "the writer is behind (queue full)")
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every step queued before the call is written; True if it finished in time."""
        thread = self._thread
        if thread is None:
            return True
        if self._closed:
            # close() queued its stop after every step: written once the writer ended.
            thread.join(timeout_s)
            return not thread.is_alive()
        deadline = time.monotonic() + timeout_s
        marker = _FlushMarker()
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.reached.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, stop the writer and close the file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("records writer for %s did not stop in %.1f s", self.path, timeout_s)
        else:
            fd, self._fd = self._fd, None  # the writer thread, when it ran, closed it
            if fd is not None:
                _close_fd(fd)
        if self._finalizer is not None:
            self._finalizer.detach()

    def counts(self) -> dict[str, int]:
        """Records written, dropped (queue full, write error, closed) and steps queued now."""
        return {
            "written": self.written_records,
            "dropped": self.dropped_records,
            "queued": self._queue.qsize(),
            "write_errors": self.write_errors,
        }

    def stats(self) -> dict[str, object]:
        """Counters for health reports."""
        return {
            "path": str(self.path),
            "written_records": self.written_records,
            "written_steps": self.written_steps,
            "dropped_records": self.dropped_records,
            "write_errors": self.write_errors,
            "pending_steps": self._queue.qsize(),
        }

    def _drop(self, count: int, why: str) -> None:
        self.dropped_records += count
        # Log the first drop and then at powers of two, so a stuck disk cannot flood the log.
        total = self.dropped_records
        if total == count or (total & (total - 1)) == 0 or count >= total // 2:
            logger.warning(
                "dropped %d records for %s: %s (%d dropped so far)", count, self.path, why, total
            )

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            if self._fd is None:
                # A forked child (see _forget_parent_writer) opens its own descriptor.
                self._fd = open_records_file(self.path)
            fd = self._fd
            thread = threading.Thread(
                target=self._run, args=(fd,), daemon=True, name="qr-records-writer"
            )
            thread.start()
            self._thread = thread
            # The thread owns the descriptor now. Write out what is queued when the
            # interpreter exits normally.
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, JsonlRecordSink._at_exit, self._queue, thread)

    def _forget_parent_writer(self) -> None:
        """In a forked child: drop the parent's writer, queue and file; the next write starts anew.

        The child runs alone right after the fork: no other thread can hold the lock
        or the queue, but a copy of them may be locked for good by a parent thread.
        """
        self._lock = threading.Lock()
        self._queue = queue.Queue(maxsize=self._max_pending)
        self._thread = None
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copy; the parent's writer keeps its own
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self.dropped_records = self.written_records = self.written_steps = 0
        self.write_errors = self._errors_unlogged = 0
        self._error_logged_at = float("-inf")

    @staticmethod
    def _at_exit(q: queue.Queue[object], thread: threading.Thread) -> None:
        if thread.is_alive():
            q.put(_STOP)
            thread.join(5.0)

    def _run(self, fd: int) -> None:
        q = self._queue
        try:
            while True:
                item = q.get()
                try:
                    if item is _STOP:
                        return
                    if isinstance(item, _FlushMarker):
                        item.reached.set()
                        continue
                    self._write_step(fd, cast(StepRecords, item))
                finally:
                    q.task_done()
        finally:
            self._fd = None  # before closing: a child forked later must not close the number
            os.close(fd)

    def _write_step(self, fd: int, step: StepRecords) -> None:
        start = -1
        try:
            data = memoryview(step.to_jsonl())
            start = os.fstat(fd).st_size
            # One write call normally takes it all; loop for the rare short write.
            while data:
                written = os.write(fd, data)
                data = data[written:]
        except Exception as exc:
            rolled_back = self._roll_back(fd, start)
            self.write_errors += 1
            self.dropped_records += len(step)
            self._log_error(exc, len(step), rolled_back)
            return
        self.written_records += len(step)
        self.written_steps += 1

    def _roll_back(self, fd: int, start: int) -> bool:
        """Cut what a failed write left (a partial line) back to the step's first byte."""
        if start < 0:
            return True  # nothing was written
        try:
            if os.fstat(fd).st_size > start:
                os.ftruncate(fd, start)
        except OSError:
            return False
        return True

    def _log_error(self, exc: BaseException, count: int, rolled_back: bool) -> None:
        self._errors_unlogged += 1
        now = time.monotonic()
        if now - self._error_logged_at < ERROR_LOG_INTERVAL_S:
            return
        first = self._error_logged_at == float("-inf")
        self._error_logged_at = now
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        logger.error(
            "could not write %d records to %s: %s%s%s; %d write errors and %d dropped "
            "records so far (%d errors since the last such line; logged at most once "
            "every %.0f s); sampling goes on",
            count,
            self.path,
            f"{type(exc).__name__}: {exc}",
            " (the disk is full)" if full else "",
            "" if rolled_back else "; the partial line could NOT be cut away",
            self.write_errors,
            self.dropped_records,
            self._errors_unlogged,
            ERROR_LOG_INTERVAL_S,
            exc_info=first and not isinstance(exc, OSError),
        )
        self._errors_unlogged = 0


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
