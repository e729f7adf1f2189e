"""The records file on a bad disk: refused paths, partial lines cut, full disks survived."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _steps import step
from qr_vllm import JsonlRecordSink
from qr_vllm import _sink as sink_module
from qr_vllm._errors import RecordsPathError


def _parsed(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the file ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``where`` (root only); skips the test where mounting is impossible."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_directory_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(RecordsPathError, match="is a directory") as info:
        JsonlRecordSink(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "QR_RECORDS_PATH" in str(info.value)


def test_a_read_only_place_is_refused_at_start(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        ctx = tmpfs(tmp_path / "ro", "ro,size=64k")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        ctx = contextlib.nullcontext(ro)
    with ctx as ro, pytest.raises(RecordsPathError, match="cannot be opened for writing"):
        JsonlRecordSink(ro / "records.jsonl")


def test_a_parent_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RecordsPathError, match="cannot be opened for writing"):
        JsonlRecordSink(blocker / "sub" / "records.jsonl")


def test_a_partial_last_line_is_cut_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"whole": 1}\n{"whole": 2}\n{"cut": ')
    with caplog.at_level(logging.WARNING):
        sink = JsonlRecordSink(path)
    assert "partial line" in caplog.text
    sink.write(step(2))
    sink.close()
    rows = _parsed(path)
    assert len(rows) == 4
    assert rows[:2] == [{"whole": 1}, {"whole": 2}]


def test_a_file_of_one_partial_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"cut": ')
    JsonlRecordSink(path).close()
    assert path.read_text() == ""


def _fill_until_errors(sink: JsonlRecordSink, steps: int) -> None:
    for i in range(steps):
        assert sink.write(step(8, start_seq=i)) or sink.dropped_records
        assert sink.flush(60)


def test_a_full_tmpfs_keeps_whole_lines_counts_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as small:
        path = small / "records.jsonl"
        sink = JsonlRecordSink(path)
        with caplog.at_level(logging.ERROR):
            _fill_until_errors(sink, 200)  # about 5 KB a step: the disk fills up
        counts = sink.counts()
        assert counts["write_errors"] > 1
        assert counts["written"] > 0
        assert counts["dropped"] == 8 * counts["write_errors"]
        assert counts["written"] + counts["dropped"] == 8 * 200
        assert counts["queued"] == 0
        rows = _parsed(path)
        assert len(rows) == counts["written"]
        # Logged once (rate-limited), naming the cause.
        lines = [r for r in caplog.records if "could not write" in r.getMessage()]
        assert len(lines) == 1
        assert "disk is full" in lines[0].getMessage()
        # Space comes back: writing goes on, still whole lines.
        path.write_bytes(b"")
        _fill_until_errors(sink, 2)
        sink.close()
        assert len(_parsed(path)) == 16


def test_an_injected_partial_write_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no tmpfs can be mounted: a write that stores half its bytes, then ENOSPC."""
    path = tmp_path / "r.jsonl"
    sink = JsonlRecordSink(path)
    sink.write(step(2))
    assert sink.flush()
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", half_then_full)
    sink.write(step(3))
    assert sink.flush()
    monkeypatch.setattr(sink_module.os, "write", real_write)
    sink.write(step(4))
    sink.close()
    rows = _parsed(path)
    assert len(rows) == 6
    assert sink.counts() == {"written": 6, "dropped": 3, "queued": 0, "write_errors": 1}


def test_write_never_raises_when_the_writer_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = JsonlRecordSink(tmp_path / "r.jsonl")

    def no_thread(*args: object, **kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sink_module.threading.Thread, "start", no_thread)
    assert not sink.write(step(2))
    assert sink.dropped_records == 2
    sink.close()
