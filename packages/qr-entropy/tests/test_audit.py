"""Row digests, the hash-chained AuditLog (real files) and verify_audit, finding by finding."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from qr_entropy import (
    GENESIS_HASH,
    AuditLog,
    AuditLogError,
    EntropyBlock,
    EntropyUnavailableError,
    FallbackEntropySource,
    MockUniformSource,
    SystemEntropySource,
    line_hash,
    row_digest,
    row_digests,
    split_digests,
    verify_audit,
)
from qr_entropy._base import EntropySource

CLI = [str(Path(sys.executable).parent / "qr-entropy"), "audit", "verify"]


class _Down(EntropySource):
    @property
    def name(self) -> str:
        return "down"

    def get_random_bytes(self, n: int) -> bytes:
        raise EntropyUnavailableError("unplugged")


def test_row_digest_is_blake2b_128_hex() -> None:
    # The published BLAKE2b-128 value of the empty input.
    assert row_digest(b"") == "cae66941d9efbd404e4d88758ea67670"
    assert row_digest(b"abc") == hashlib.blake2b(b"abc", digest_size=16).hexdigest()
    block = np.frombuffer(bytes(range(256)) * 3, dtype=np.uint8).reshape(3, 256)
    assert row_digests(block) == tuple(row_digest(bytes(range(256))) for _ in range(3))
    assert split_digests(block.tobytes(), 3) == row_digests(block)
    with pytest.raises(ValueError, match="rows=5 must be >= 1 and divide the 768 bytes"):
        split_digests(block.tobytes(), 5)
    with pytest.raises(ValueError, match="2-D"):
        row_digests(block.reshape(-1))


@pytest.mark.parametrize("source", [SystemEntropySource(), MockUniformSource(seed=3)])
def test_every_block_carries_the_digest_of_each_row(source: EntropySource) -> None:
    with source:
        block = source.fetch_block(5, 1000)
        fetch = source.fetch(64)
    assert block.provenance.row_digests == tuple(row_digest(row) for row in block.data)
    assert fetch.provenance.row_digests == (row_digest(fetch.data),)
    assert block.provenance.sequence_id == 0  # local sources have no server
    assert block.provenance.generation_timestamp_ns == 0
    assert source.fetch_block(0, 10).provenance.row_digests == ()


def test_a_fallback_block_keeps_its_digests_and_is_flagged() -> None:
    with FallbackEntropySource(_Down(), MockUniformSource(seed=1)) as source:
        block = source.fetch_block(2, 100)
    assert block.provenance.is_fallback
    assert block.provenance.row_digests == row_digests(block.data)


def _serve(
    log: AuditLog, source: EntropySource, count: int, rows: int = 2, start: int = 0
) -> list[EntropyBlock]:
    """Play a server: fetch, log, 'send'; returns the blocks a client would see.

    Request ``k`` (from ``start``) gets sequence id ``k + 1`` at time ``1000 + k``, which
    is what `_records` writes for the ``k + 1``-th block.
    """
    blocks = []
    for k in range(start, start + count):
        block = source.fetch_block(rows, 256)
        log.append(
            block.data.tobytes(), time_ns=1_000 + k, sequence_id=k + 1, rows=rows, device_id="dev"
        )
        blocks.append(block)
    return blocks


def _records(blocks: list[EntropyBlock], path: Path, chosen_ns: int = 10**6) -> Path:
    lines = []
    for serial, block in enumerate(blocks, start=1):
        for row, digest in enumerate(block.provenance.row_digests):
            lines.append(
                json.dumps(
                    {
                        "request_serial": serial,
                        "sequence_number": row,
                        "status": "ok",
                        "is_fallback": block.provenance.is_fallback,
                        "device_id": "dev",
                        "timestamp_ns": chosen_ns,
                        "entropy_digest": digest,
                        "entropy_sequence_id": serial,
                        "entropy_generated_ns": 999 + serial,
                    }
                )
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lines_are_chained_and_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="always") as log:
        assert log.head == (-1, GENESIS_HASH)
        blocks = _serve(log, MockUniformSource(seed=1), 3)
        head = log.head
    lines = path.read_bytes().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["index"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == GENESIS_HASH
    assert entries[1]["prev"] == hashlib.sha256(lines[0]).hexdigest() == line_hash(lines[0])
    assert entries[2]["digests"] == list(blocks[2].provenance.row_digests)
    assert entries[0] == {
        "v": 1,
        "index": 0,
        "time_ns": 1000,
        "sequence_id": 1,
        "bytes": 512,
        "device_id": "dev",
        "digests": list(blocks[0].provenance.row_digests),
        "prev": GENESIS_HASH,
    }
    assert head == (2, line_hash(lines[2]))
    with AuditLog(path) as log:
        assert log.head == head
        blocks += _serve(log, MockUniformSource(seed=2), 2, start=3)
    report = verify_audit([_records(blocks, tmp_path / "r.jsonl")], [path])
    assert report.ok, report.findings
    assert (report.records, report.tokens_verified, report.log_lines) == (10, 10, 5)


def test_a_partial_last_line_is_dropped_on_reopen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        blocks = _serve(log, MockUniformSource(seed=1), 2)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"v":1,"index":2,"time_ns":')
    report = verify_audit([_records(blocks, tmp_path / "r.jsonl")], [path])
    # No response was sent for a line the server did not finish: noted, not a finding.
    assert report.ok, report.findings
    assert report.notes[0].startswith(f"{path}:3: partial last line of 27 bytes ignored")
    with AuditLog(path) as log:
        assert path.read_bytes() == whole
        assert log.head[0] == 1
    assert "event=audit_log_truncated" in caplog.text
    # A file holding only a partial line starts over from the genesis value.
    only = tmp_path / "only.jsonl"
    only.write_bytes(b'{"v":1')
    with AuditLog(only) as log:
        assert log.head == (-1, GENESIS_HASH)
    assert only.read_bytes() == b""


def test_a_log_is_refused_when_it_cannot_be_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path), pytest.raises(AuditLogError, match="in use by another process"):
        AuditLog(path)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(AuditLogError, match="is not an audit log line"):
        AuditLog(other)
    with pytest.raises(AuditLogError, match="fsync='sometimes' is not one of always, interval"):
        AuditLog(path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(AuditLogError, match="cannot open audit log"):
        AuditLog(tmp_path / "missing-dir" / "audit.jsonl")
    log = AuditLog(path)
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditLogError, match="is closed"):
        log.append(b"xx", time_ns=1, sequence_id=1, rows=1, device_id="d")


def test_a_failed_write_leaves_no_half_line_and_refuses_later_appends(tmp_path: Path) -> None:
    # A real EFBIG: the file-size limit of a child process is set below the second line.
    path = tmp_path / "audit.jsonl"
    script = f"""
import resource, signal
from qr_entropy import AuditLog, AuditLogError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
log = AuditLog({str(path)!r}, fsync="always")
log.append(b"a" * 100, time_ns=1, sequence_id=1, rows=1, device_id="d")
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
for attempt in range(2):
    try:
        log.append(b"b" * 100, time_ns=2, sequence_id=2, rows=1, device_id="d")
    except AuditLogError as error:
        print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    first, second = result.stdout.splitlines()
    assert "cannot write audit log" in first
    assert "failed earlier" in second
    assert len(path.read_bytes().splitlines()) == 1
    assert path.read_bytes().endswith(b"\n")


def test_concurrent_appends_make_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="always") as log:
        source_blocks: list[list[EntropyBlock]] = [[] for _ in range(4)]

        def worker(slot: int) -> None:
            source_blocks[slot] = _serve(log, MockUniformSource(seed=slot), 25, start=25 * slot)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    blocks = [b for group in source_blocks for b in group]
    records = _records(blocks, tmp_path / "r.jsonl")
    report = verify_audit([records], [path])
    assert report.ok, report.findings
    assert report.log_lines == 100
    assert [json.loads(x)["index"] for x in path.read_bytes().splitlines()] == list(range(100))


def test_raw_bytes_are_kept_on_request_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, raw=True) as log:
        _serve(log, MockUniformSource(seed=1), 2)
    entry = json.loads(path.read_bytes().splitlines()[0])
    assert split_digests(base64.b64decode(entry["raw"]), 2) == tuple(entry["digests"])
    assert verify_audit([], [path]).ok
    # Changing the raw bytes (and re-chaining, so only the raw check can tell) is found.
    entry["raw"] = base64.b64encode(b"\x00" * 512).decode()
    path.write_text(json.dumps(entry) + "\n")
    report = verify_audit([], [path])
    assert [f.kind for f in report.findings] == ["raw_mismatch"]


def test_each_record_problem_is_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        blocks = _serve(log, MockUniformSource(seed=1), 3)
    records = _records(blocks, tmp_path / "r.jsonl")
    clean = verify_audit([records], [path])
    assert clean.ok
    assert clean.tokens_verified == 6
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    lines[0]["device_id"] = "elsewhere"
    lines[4]["entropy_sequence_id"] = 1  # its line is request 3's
    lines[1]["timestamp_ns"] = 500
    del lines[2]["entropy_digest"]
    lines[3]["status"] = "failed"  # no bytes chose a failed request's token: skipped
    records.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n[1]\n")
    with path.open("ab") as handle:
        handle.write(b"[]\n")  # a whole line that is not an audit line
    report = verify_audit([records], [path], all_served=True, expected_heads=["f" * 64])
    found = sorted((f.kind, f.where) for f in report.findings)
    assert found == sorted(
        [
            ("mismatch", f"{records}:1"),
            ("mismatch", f"{records}:5"),
            ("too_early", f"{records}:2"),
            ("no_digest", f"{records}:3"),
            ("bad_record", f"{records}:7"),
            ("bad_record", f"{records}:8"),
            ("unused", f"{path}:2"),  # row 0 of line 2: record 3 lost its digest
            ("unused", f"{path}:2"),  # row 1 of line 2: record 4 is a failed request
            ("head_missing", "f" * 64),
            ("bad_line", f"{path}:4"),
        ]
    )
    head = report.heads[0]
    assert head.hash == line_hash(path.read_bytes().splitlines()[-1])
    assert not any(
        f.kind == "head_missing"
        for f in verify_audit([], [path], expected_heads=[head.hash]).findings
    )
    # A clock tolerance covers a record chosen up to that much "before" its bytes.
    assert not any(
        f.kind == "too_early" for f in verify_audit([records], [path], clock_skew_ns=10**6).findings
    )


def test_the_command_prints_a_table_and_exits_non_zero_on_findings(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        blocks = _serve(log, MockUniformSource(seed=1), 2)
    records = _records(blocks, tmp_path / "r.jsonl")
    ok = subprocess.run(
        [*CLI, "--records", str(records), "--log", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: 4 of 4 records verified against 4 served rows in 2 log lines" in ok.stdout
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[1])  # first line deleted
    bad = subprocess.run(
        [*CLI, "--records", str(records), "--log", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert "chain_break" in bad.stdout
    assert "FAILED" in bad.stdout
    missing = subprocess.run(
        [*CLI, "--records", str(tmp_path / "none.jsonl"), "--log", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
