"""``system``: the operating system's cryptographic RNG."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from qr_entropy._base import EntropySource

__all__ = ["SystemEntropySource"]

#: Smallest share of a read handed to another thread. Below about this size the
#: hand-off to a reader thread costs more than it saves (measured on a 2-core VM:
#: a 160 KiB read split in two took 0.37 ms instead of 0.66 ms, an 80 KiB one gained nothing).
PARALLEL_PART_BYTES = 128 * 1024
#: Most threads one read is spread over, the calling thread included.
MAX_READERS = 8


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class SystemEntropySource(EntropySource):
    """Bytes from ``os.urandom``: always available, cryptographically secure, not quantum.

    It is the default fallback and the baseline to compare other sources with.
    Its output is a conditioned DRBG, not raw noise, so the SP 800-90B noise
    source health tests are not run on it.

    A large read (a decode step's block for a big batch) is split into parts of
    at least `PARALLEL_PART_BYTES`, read at once on up to `MAX_READERS` threads
    (never more than the CPUs this process may use): the kernel's RNG runs per
    CPU, and ``os.urandom`` releases the GIL. The reader threads start on the
    first such read, not at import or construction. The calling thread reads
    the first part and then takes back every part no reader has started, so a
    read never waits for a thread that has not been scheduled (or that a fork
    left behind) and costs at most one serial read.
    """

    def __init__(self) -> None:
        self._readers: ThreadPoolExecutor | None = None
        self._readers_pid = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``"system"``."""
        return "system"

    def get_random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from ``os.urandom`` (in parallel parts when ``n`` is large)."""
        total = self.check_request(1, n)
        if total < 2 * PARALLEL_PART_BYTES:  # one part: no need to ask for the CPUs
            return os.urandom(total)
        parts = min(MAX_READERS, _usable_cpus(), total // PARALLEL_PART_BYTES)
        if parts < 2:
            return os.urandom(total)
        size, extra = divmod(total, parts)
        sizes = [size + (1 if i < extra else 0) for i in range(parts)]
        try:
            pool = self._pool()
            pending: list[Future[bytes]] = [pool.submit(os.urandom, s) for s in sizes[1:]]
        except RuntimeError:  # another thread closed the pool meanwhile
            return os.urandom(total)
        chunks = [os.urandom(sizes[0])]
        for future, s in zip(pending, sizes[1:], strict=True):
            # cancel() succeeds only for a part no reader has begun: read it here instead.
            chunks.append(os.urandom(s) if future.cancel() else future.result())
        return b"".join(chunks)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            pool = self._readers
            # A forked child inherits the pool but not its threads: it starts its own.
            if pool is None or self._readers_pid != os.getpid():
                # The executor starts a thread only when no started one is idle: with
                # few usable CPUs, reads of few parts keep reusing the first readers.
                pool = ThreadPoolExecutor(
                    max_workers=MAX_READERS - 1, thread_name_prefix="qr-system-read"
                )
                self._readers, self._readers_pid = pool, os.getpid()
            return pool

    def close(self) -> None:
        """Stop the reader threads, if any were started (a later large read starts new ones)."""
        with self._lock:
            pool, self._readers = self._readers, None
        if pool is not None and self._readers_pid == os.getpid():
            pool.shutdown(wait=True)
