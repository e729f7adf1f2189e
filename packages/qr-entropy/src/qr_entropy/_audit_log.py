"""`AuditLog`: an append-only, hash-chained JSON Lines log of the bytes a server served.

One line per request served, written before the response leaves (so a served byte
is always in the OS's hands first), with the BLAKE2b-128 digest of each row
(`qr_entropy.row_digest`, the same digest the records carry) and the SHA-256 of the
previous line's exact bytes. The format, the fsync policies and the crash recovery
are described in ARCHITECTURE.md, design note "Audit chain"; `verify_audit` checks
a log against records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Literal

from qr_entropy._digest import split_digests
from qr_entropy._errors import QREntropyError

__all__ = [
    "AUDIT_FORMAT_VERSION",
    "DEFAULT_FSYNC_INTERVAL_MS",
    "GENESIS_HASH",
    "AuditLog",
    "AuditLogError",
    "FsyncPolicy",
    "line_hash",
]

logger = logging.getLogger(__name__)

#: The ``v`` field of every line.
AUDIT_FORMAT_VERSION = 1
#: The ``prev`` of the first line: SHA-256 has no input that hashes to it in practice.
GENESIS_HASH = "0" * 64
#: How often the ``interval`` policy forces written lines to stable storage.
DEFAULT_FSYNC_INTERVAL_MS = 200.0

FsyncPolicy = Literal["always", "interval"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval")
_TAIL_CHUNK = 1 << 16
_sync = getattr(os, "fdatasync", os.fsync)


class AuditLogError(QREntropyError):
    """The audit log cannot be opened, extended or written."""


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of one line's exact bytes, without its terminating newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(fd: int, size: int) -> bytes:
    """The last line of a file that ends with a newline (empty bytes for an empty file)."""
    end = size - 1  # index of the final newline
    start = end
    while start > 0:
        step = min(_TAIL_CHUNK, start)
        chunk = os.pread(fd, step, start - step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            start = start - step + cut + 1
            break
        start -= step
    return os.pread(fd, end - start, start)


class AuditLog:
    """An open audit log; `append` one line per request served. Thread-safe.

    Opening recovers from a crash: a partial last line (the process died while
    writing it) is truncated away, and the chain continues from the last whole line.
    The file is locked (``flock``) so two servers never extend the same log.

    Args:
        path: The log file; created (with its directory entry synced) when absent.
        fsync: ``always``: every `append` returns only after the line is on stable
            storage (concurrent appends share one fsync). ``interval``: `append`
            returns once the line is written to the OS (it survives a crash of the
            process, not of the machine), and a background thread syncs written
            lines every ``fsync_interval_ms``.
        fsync_interval_ms: Period of the ``interval`` policy.
        raw: Also store each request's bytes (base64) in its line.

    Raises:
        AuditLogError: The file cannot be opened or locked, or its last whole line is
            not an audit line (the chain could not continue).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: float = DEFAULT_FSYNC_INTERVAL_MS,
        raw: bool = False,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise AuditLogError(f"fsync={fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        if not fsync_interval_ms > 0:
            raise AuditLogError(f"fsync_interval_ms={fsync_interval_ms} must be > 0")
        self.path = Path(path)
        self.fsync: FsyncPolicy = fsync
        self.raw = raw
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as error:
            raise AuditLogError(f"cannot open audit log {self.path}: {error.strerror}") from None
        import fcntl  # noqa: PLC0415 -- POSIX only; importing qr_entropy must work anywhere

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditLogError(f"audit log {self.path} is in use by another process") from None
        try:
            self._next_index, self._prev = self._recover(fd)
            if not existed:
                _sync_directory(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0
        self._synced = 0
        self._failure: OSError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop,
                args=(fsync_interval_ms / 1000.0,),
                name="qr-audit-fsync",
                daemon=True,
            )
            self._flusher.start()

    def _recover(self, fd: int) -> tuple[int, str]:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS_HASH
        tail = os.pread(fd, 1, size - 1)
        if tail != b"\n":
            # A crash mid-write left part of a line: the response it belonged to was
            # never sent (lines are written before responses), so dropping it is exact.
            keep = size - 1
            while keep > 0:
                step = min(_TAIL_CHUNK, keep)
                cut = os.pread(fd, step, keep - step).rfind(b"\n")
                if cut >= 0:
                    keep = keep - step + cut + 1
                    break
                keep -= step
            os.ftruncate(fd, keep)
            _sync(fd)
            logger.warning(
                "event=audit_log_truncated path=%s dropped_bytes=%d", self.path, size - keep
            )
            size = keep
            if size == 0:
                return 0, GENESIS_HASH
        last = _last_line(fd, size)
        try:
            index = json.loads(last)["index"]
            if not isinstance(index, int):
                raise TypeError(index)
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(
                f"the last line of {self.path} is not an audit log line; refusing to extend "
                "it (start a new log file)"
            ) from None
        return index + 1, line_hash(last)

    @property
    def head(self) -> tuple[int, str]:
        """``(index, hash)`` of the last line written (``(-1, GENESIS_HASH)`` when empty)."""
        with self._lock:
            return self._next_index - 1, self._prev

    def append(
        self,
        data: bytes | bytearray | memoryview,
        *,
        time_ns: int,
        sequence_id: int,
        rows: int,
        device_id: str,
    ) -> int:
        """Write the line for one request served; returns its index.

        Returns once the line is written to the OS (``interval``) or on stable
        storage (``always``): send the response only after it returns.

        Args:
            data: The bytes served.
            time_ns: The generation time reported to the client (Unix ns).
            sequence_id: The client's request sequence id.
            rows: How many equal rows the bytes split into (``>= 1``).
            device_id: The device id reported to the client.

        Raises:
            ValueError: ``rows`` does not divide the bytes.
            AuditLogError: The log is closed or a write failed; a failed write leaves
                the log refusing every later append, so nothing is served unlogged.
        """
        fields = {
            "time_ns": time_ns,
            "sequence_id": sequence_id,
            "bytes": len(data),
            "device_id": device_id,
            "digests": split_digests(data, rows),
        }
        if self.raw:
            fields["raw"] = base64.b64encode(data).decode("ascii")
        body = json.dumps(fields, separators=(",", ":"))[1:-1]
        with self._lock:
            if self._closed:
                raise AuditLogError(f"audit log {self.path} is closed")
            if self._failure is not None:
                raise AuditLogError(
                    f"audit log {self.path} failed earlier ({self._failure}); not serving"
                )
            index = self._next_index
            line = (
                f'{{"v":{AUDIT_FORMAT_VERSION},"index":{index},{body},"prev":"{self._prev}"}}'
            ).encode()
            self._write(line + b"\n")
            self._next_index = index + 1
            self._prev = hashlib.sha256(line).hexdigest()
            self._written += 1
            mine = self._written
        if self.fsync == "always":
            self._sync_up_to(mine)
        return index

    def _write(self, payload: bytes) -> None:
        start = os.fstat(self._fd).st_size
        view = memoryview(payload)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as error:
            self._failure = error
            # Leave no half line behind (O_APPEND: the line started at ``start``).
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                logger.exception("event=audit_log_truncate_failed path=%s", self.path)
            logger.error("event=audit_log_write_failed path=%s error=%r", self.path, str(error))
            raise AuditLogError(f"cannot write audit log {self.path}: {error.strerror}") from None

    def _sync_up_to(self, count: int) -> None:
        # Group commit: one fsync covers every line written before it started.
        with self._sync_lock:
            if self._synced >= count or self._fd < 0:
                return
            target = self._written
            try:
                _sync(self._fd)
            except OSError as error:
                self._failure = error
                raise AuditLogError(f"cannot sync audit log {self.path}: {error}") from None
            self._synced = target

    def sync(self) -> None:
        """Force every line written so far to stable storage."""
        self._sync_up_to(self._written)

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sync()
            except AuditLogError:
                logger.exception("event=audit_log_sync_failed path=%s", self.path)

    def close(self) -> None:
        """Sync, stop the flusher and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.sync()
        finally:
            with self._sync_lock:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _sync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable (best effort where not supported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
