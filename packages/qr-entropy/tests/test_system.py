"""The ``system`` source's parallel reads of large blocks.

A spy wraps ``os.urandom`` in some tests to see which thread read which part;
every byte still comes from the real ``os.urandom``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from qr_entropy import SystemEntropySource
from qr_entropy.sources import _system

PART = _system.PARALLEL_PART_BYTES
MAIN = threading.current_thread().name


@pytest.fixture
def source() -> Iterator[SystemEntropySource]:
    src = SystemEntropySource()
    yield src
    src.close()


class Spy:
    """Records (thread name, size) of each os.urandom call and passes it through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        self.real = os.urandom
        self.helper_reading = threading.Event()
        self.main_waits_for_helper = False
        monkeypatch.setattr(_system.os, "urandom", self)

    def __call__(self, n: int) -> bytes:
        name = threading.current_thread().name
        if name.startswith("qr-system-read"):
            self.helper_reading.set()
        elif self.main_waits_for_helper:
            self.helper_reading.wait(10)
        self.calls.append((name, n))
        return self.real(n)


def test_small_read_is_one_call_and_starts_no_thread(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 8)
    data = source.get_random_bytes(2 * PART - 1)
    assert len(data) == 2 * PART - 1
    assert spy.calls == [(MAIN, 2 * PART - 1)]
    assert source._readers is None


def test_large_read_is_split_over_reader_threads(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 4)
    # The calling thread reads its part only once a reader is reading: proof of parallelism.
    spy.main_waits_for_helper = True
    n = 4 * PART + 3
    data = source.get_random_bytes(n)
    assert len(data) == n
    sizes = sorted(size for _, size in spy.calls)
    assert sizes == [PART, PART + 1, PART + 1, PART + 1]
    assert any(name.startswith("qr-system-read") for name, _ in spy.calls)
    assert (MAIN, PART + 1) in spy.calls  # the first part is the caller's own
    # The parts are distinct reads, not one read repeated.
    assert len({data[i * PART : (i + 1) * PART] for i in range(4)}) == 4


def test_parts_no_reader_started_are_read_by_the_caller(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(_system, "MAX_READERS", 2)  # a pool of one reader
    source.get_random_bytes(2 * PART)  # starts it
    release = threading.Event()
    busy = source._pool().submit(release.wait, 10)  # keeps that reader busy
    spy = Spy(monkeypatch)
    try:
        data = source.get_random_bytes(2 * PART + 1)
    finally:
        release.set()
    assert busy.result(5) is True
    assert len(data) == 2 * PART + 1
    assert spy.calls == [(MAIN, PART + 1), (MAIN, PART)]


def test_read_uses_no_more_threads_than_cpus(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 1)
    assert len(source.get_random_bytes(8 * PART)) == 8 * PART
    assert spy.calls == [(MAIN, 8 * PART)]
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 64)
    spy.calls.clear()
    assert len(source.get_random_bytes(100 * PART)) == 100 * PART
    assert len(spy.calls) == _system.MAX_READERS
    readers = [t for t in threading.enumerate() if t.name.startswith("qr-system-read")]
    assert 1 <= len(readers) <= _system.MAX_READERS - 1


def _started_readers(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> ThreadPoolExecutor:
    """Two usable CPUs and one large read: the source's reader pool, started."""
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 2)
    source.get_random_bytes(2 * PART)
    pool = source._readers
    assert pool is not None
    return pool


def test_close_stops_readers_and_a_later_read_starts_new_ones(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _started_readers(source, monkeypatch)
    source.close()
    assert source._readers is None
    with pytest.raises(RuntimeError):
        pool.submit(os.urandom, 1)
    assert len(source.get_random_bytes(2 * PART)) == 2 * PART
    assert source._readers is not None
    assert source._readers is not pool


def test_read_racing_close_falls_back_to_one_read(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _started_readers(source, monkeypatch)
    # As if another thread closed the pool between this read's lookup and its submit.
    pool.shutdown(wait=True)
    spy = Spy(monkeypatch)
    assert len(source.get_random_bytes(2 * PART)) == 2 * PART
    assert spy.calls == [(MAIN, 2 * PART)]


def _child_read(src: SystemEntropySource, n: int, out: multiprocessing.SimpleQueue[int]) -> None:
    out.put(len(src.get_random_bytes(n)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
# Python >= 3.12 warns about fork() beside threads; here the reader thread is the point.
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_forked_child_reads_with_its_own_readers(
    source: SystemEntropySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_system, "_usable_cpus", lambda: 2)
    source.get_random_bytes(2 * PART)  # the parent's reader thread exists before the fork
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.SimpleQueue[int] = ctx.SimpleQueue()
    child = ctx.Process(target=_child_read, args=(source, 4 * PART, out))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert out.get() == 4 * PART
