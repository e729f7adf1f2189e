"""The JSON Lines sink: background writing, flush, bounded queue, crash safety."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _steps import step
from qr_vllm import JsonlRecordSink


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_checked_at_start_no_thread_until_first_write(tmp_path: Path) -> None:
    before = threading.active_count()
    sink = JsonlRecordSink(tmp_path / "sub" / "r.jsonl")
    assert threading.active_count() == before
    # The path is checked (and a missing parent created) when the sink is built.
    assert (tmp_path / "sub" / "r.jsonl").is_file()
    assert sink.flush()
    sink.write(step(0))  # an empty step starts nothing
    assert threading.active_count() == before
    sink.close()


def test_writes_every_step_in_order(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    sink = JsonlRecordSink(path)
    for i in range(5):
        assert sink.write(step(3, start_seq=i))
    assert sink.flush()
    rows = _lines(path)
    assert len(rows) == 15
    assert [r["sequence_number"] for r in rows[::3]] == [0, 1, 2, 3, 4]
    assert sink.stats()["written_records"] == 15
    sink.close()
    sink.close()  # idempotent
    assert not sink.write(step(1))
    assert sink.dropped_records == 1


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"earlier": true}\n')
    sink = JsonlRecordSink(path)
    sink.write(step(1))
    sink.close()
    assert len(path.read_text().splitlines()) == 2


def test_full_queue_drops_counts_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonlRecordSink(tmp_path / "r.jsonl", max_pending_steps=1)
    gate = threading.Event()
    real = sink._write_step

    def slow(fd: int, s: object) -> None:
        gate.wait(10)
        real(fd, s)  # type: ignore[arg-type]

    sink._write_step = slow  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        sink.write(step(2))  # taken by the writer, which blocks
        time.sleep(0.2)
        sink.write(step(2))  # fills the queue
        started = time.monotonic()
        assert not sink.write(step(2))  # dropped, without blocking
        assert time.monotonic() - started < 0.5
    assert sink.dropped_records == 2
    assert "dropped 2 records" in caplog.text
    gate.set()
    sink.close()
    assert sink.written_records == 4


def test_write_errors_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonlRecordSink(tmp_path / "r.jsonl")

    class Broken:
        def __len__(self) -> int:
            return 3

        def to_jsonl(self) -> bytes:
            raise OSError("disk full")

    with caplog.at_level(logging.ERROR):
        sink._start()
        sink._queue.put(Broken())
        sink.flush()
    assert sink.write_errors == 1
    assert sink.dropped_records == 3
    assert "disk full" in caplog.text
    sink.close()


def test_bad_queue_size() -> None:
    with pytest.raises(ValueError, match="max_pending_steps must be >= 1, got 0"):
        JsonlRecordSink("x", 0)


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from _steps import step
    from qr_vllm import JsonlRecordSink
    sink = JsonlRecordSink(sys.argv[1])
    i = 0
    while True:
        sink.write(step(4, start_seq=i))
        # Report a step as completed only once it reached the file.
        while sink.written_steps <= i:
            time.sleep(0.001)
        print(i, flush=True)
        i += 1
    """
)


def test_a_killed_writer_keeps_every_completed_step(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    completed = -1
    while completed < 30:
        line = child.stdout.readline()
        assert line, "the child exited early"
        completed = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    text = path.read_text()
    assert text.endswith("\n")  # whole lines only
    rows = [json.loads(line) for line in text.splitlines()]
    steps = {r["sequence_number"] for r in rows}
    assert set(range(completed + 1)) <= steps
    assert len(rows) % 4 == 0


def test_flush_starts_no_thread_and_waits_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.jsonl"
    sink = JsonlRecordSink(path)
    sink.write(step(2))
    assert sink.flush(timeout_s=60)
    threads = {t.ident for t in threading.enumerate()}
    # A writer held up (a slow disk): flush gives up at its timeout, then succeeds.
    gate = threading.Event()
    original = sink._write_step

    def slow(fd: int, s: object) -> None:
        assert gate.wait(60)
        original(fd, s)  # type: ignore[arg-type]

    monkeypatch.setattr(sink, "_write_step", slow)
    sink.write(step(2, start_seq=1))
    assert not sink.flush(timeout_s=0.2)
    assert {t.ident for t in threading.enumerate()} == threads  # flush started no thread
    gate.set()
    assert sink.flush(timeout_s=60)
    assert len(_lines(path)) == 4
    sink.close()
    assert sink.flush(timeout_s=60)  # closed: everything was written


def test_a_forked_child_starts_its_own_writer(tmp_path: Path) -> None:
    import warnings

    path = tmp_path / "r.jsonl"
    sink = JsonlRecordSink(path)
    sink.write(step(2))
    assert sink.flush(timeout_s=60)
    parent_writer = sink._thread
    assert parent_writer is not None
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; forking one with
        # the writer running is exactly what this test does on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            assert sink._thread is None  # the parent's writer is not ours
            assert sink.write(step(3, start_seq=7))
            child_writer = sink._thread
            assert child_writer is not None
            assert child_writer.is_alive()
            assert child_writer is not parent_writer
            assert sink.flush(timeout_s=60)
            assert sink.written_records == 3
            sink.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's writer is untouched by the child's and still writes.
    assert sink._thread is parent_writer
    assert parent_writer.is_alive()
    assert sink.write(step(1, start_seq=9))
    assert sink.flush(timeout_s=60)
    sink.close()
    rows = _lines(path)
    assert [r["sequence_number"] for r in rows] == [0, 0, 7, 7, 7, 9]  # nothing twice
