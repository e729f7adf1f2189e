"""The server's audit log against the client's provenance: real server processes, real files.

A ``qr-entropy-server --audit-log`` child process serves fetch_block calls of the real
client over a Unix socket (and loopback TCP); a records file is synthesised from the
provenance the client returned (the fields the vLLM plugin writes per token), and
``qr-entropy audit verify`` (the real console script) checks it. Then one test per
kind of tampering, and a server killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import ServerProcess, wait_for_serving
from qr_entropy import (
    AuditLog,
    EntropyBlock,
    EntropySettings,
    EntropySourceRegistry,
    EntropyUnavailableError,
    FallbackEntropySource,
    row_digest,
)
from qr_grpc import EntropyServer, GrpcSettings, QuantumGrpcSource
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

ROW_BYTES = 20_480
VERIFY = [str(Path(sys.executable).parent / "qr-entropy"), "audit", "verify"]


def _records(blocks: list[EntropyBlock], first_serial: int = 1) -> list[dict[str, object]]:
    """One record per row, with the fields the plugin writes for a token (see the design
    note "Audit chain"); the token was 'chosen' when the block arrived."""
    records = []
    for serial, block in enumerate(blocks, start=first_serial):
        p = block.provenance
        chosen_ns = time.time_ns()
        for row in range(block.data.shape[0]):
            assert p.row_digests[row] == row_digest(block.data[row])
            records.append(
                {
                    "request_serial": serial,
                    "sequence_number": row,
                    "status": "ok",
                    "entropy_source": p.source,
                    "is_fallback": p.is_fallback,
                    "fallback_reason": p.fallback_reason,
                    "device_id": p.device_id,
                    "timestamp_ns": chosen_ns,
                    "entropy_digest": p.row_digests[row],
                    "entropy_sequence_id": p.row_source_ids(row)[0],
                    "entropy_generated_ns": p.row_source_ids(row)[1],
                }
            )
    return records


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _verify(records: Path, log: Path, *extra: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [*VERIFY, "--records", str(records), "--log", str(log), "--json", *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _kinds(report: dict[str, object]) -> set[str]:
    return {f["kind"] for f in report["findings"]}  # type: ignore[attr-defined, index]


@pytest.fixture(scope="module")
def audited_run() -> Iterator[tuple[Path, Path]]:
    """A server with an audit log that served 256 rows in 64 fetches (all three modes)
    over a Unix socket through the real client; yields (records, log), read-only."""
    tmp = Path(tempfile.mkdtemp(prefix="qra-"))
    log = tmp / "audit.jsonl"
    stderr = tmp / "server.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "qr_grpc.server", "--source", "system"),
                *("--address", f"unix://{tmp / 's.sock'}", "--audit-log", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        address = wait_for_serving(proc, stderr)
        blocks: list[EntropyBlock] = []
        for mode in ("unary", "server_streaming", "bidi_streaming"):
            client = QuantumGrpcSource(_settings(address, mode))
            try:
                blocks += [
                    client.fetch_block(4, ROW_BYTES)
                    for _ in range(22 if mode == "bidi_streaming" else 21)
                ]
            finally:
                client.close()
        proc.terminate()
        assert proc.wait(30) == 0
        records = _write_jsonl(tmp / "records.jsonl", _records(blocks))
        yield records, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _settings(address: str, mode: str) -> GrpcSettings:
    return GrpcSettings(
        grpc_server_address=address,
        grpc_mode=mode,  # type: ignore[arg-type]
        grpc_timeout_ms=30_000,
    )


@pytest.fixture
def copies(audited_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """Writable copies of the clean run's records and log."""
    records, log = audited_run
    return (
        Path(shutil.copy(records, tmp_path / "records.jsonl")),
        Path(shutil.copy(log, tmp_path / "audit.jsonl")),
    )


def test_a_clean_run_verifies(audited_run: tuple[Path, Path]) -> None:
    records, log = audited_run
    lines = log.read_bytes().splitlines()
    assert len(lines) == 64
    first = json.loads(lines[0])
    assert len(first["digests"]) == 4
    assert first["index"] == 0
    assert first["prev"] == "0" * 64
    assert first["device_id"] == "system"
    assert first["sequence_id"] == 1
    assert first["bytes"] == 4 * ROW_BYTES
    assert "raw" not in first
    code, report = _verify(records, log)
    assert code == 0, report["findings"]
    assert report["records"] == report["tokens_verified"] == 256
    assert report["log_rows"] == 256
    human = subprocess.run(
        [*VERIFY, "--records", str(records), "--log", str(log)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert human.returncode == 0
    assert "OK: 256 of 256 records verified" in human.stdout


def test_a_fetch_split_across_requests_splits_at_rows_and_verifies(tmp_path: Path) -> None:
    # 10 rows of 1,000 bytes with at most 3,000 bytes per request: requests of 3, 3, 3
    # and 1 whole rows, each logged with its own rows, each row with its request's ids.
    log = tmp_path / "audit.jsonl"
    stderr = tmp_path / "server.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "qr_grpc.server", "--source", "system"),
                *("--address", f"unix://{tmp_path / 's.sock'}", "--audit-log", str(log)),
                *("--max-bytes-per-request", "3000"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        address = wait_for_serving(proc, stderr)
        blocks = []
        for mode in ("unary", "bidi_streaming"):
            settings = _settings(address, mode).model_copy(
                update={"grpc_max_bytes_per_request": 3000}
            )
            client = QuantumGrpcSource(settings)
            try:
                blocks.append(client.fetch_block(10, 1000))
            finally:
                client.close()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [len(line["digests"]) for line in lines] == [3, 3, 3, 1] * 2
    for block in blocks:
        assert len(set(block.provenance.row_sequence_ids)) == 4
    records = _write_jsonl(tmp_path / "records.jsonl", _records(blocks))
    code, report = _verify(records, log, "--all-served")
    assert code == 0, report["findings"]
    assert report["tokens_verified"] == 20


def test_a_flipped_byte_in_a_record_digest_is_missing_from_the_log(
    copies: tuple[Path, Path],
) -> None:
    records, log = copies
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    digest = rows[100]["entropy_digest"]
    rows[100]["entropy_digest"] = (
        digest[:10] + format(int(digest[10:12], 16) ^ 0x01, "02x") + digest[12:]
    )
    _write_jsonl(records, rows)
    code, report = _verify(records, log)
    assert code == 1
    assert [f["where"] for f in report["findings"]] == [f"{records}:101"]
    assert _kinds(report) == {"missing"}


def test_a_deleted_log_line_breaks_the_chain(copies: tuple[Path, Path]) -> None:
    records, log = copies
    lines = log.read_bytes().splitlines(keepends=True)
    del lines[30]
    log.write_bytes(b"".join(lines))
    code, report = _verify(records, log)
    assert code == 1
    assert _kinds(report) == {"chain_break", "missing"}
    breaks = [f for f in report["findings"] if f["kind"] == "chain_break"]
    assert [f["where"] for f in breaks] == [f"{log}:31"]
    assert "index 31 after index 29" in breaks[0]["detail"]
    assert sum(f["kind"] == "missing" for f in report["findings"]) == 4  # that line's rows


def test_a_reordered_pair_of_lines_breaks_the_chain(copies: tuple[Path, Path]) -> None:
    records, log = copies
    lines = log.read_bytes().splitlines(keepends=True)
    lines[10], lines[11] = lines[11], lines[10]
    log.write_bytes(b"".join(lines))
    code, report = _verify(records, log)
    assert code == 1
    assert _kinds(report) == {"chain_break"}
    assert [f["where"] for f in report["findings"]] == [f"{log}:{n}" for n in (11, 12, 13)]


def test_an_edited_log_line_breaks_the_chain_after_it(copies: tuple[Path, Path]) -> None:
    records, log = copies
    lines = log.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[5])
    lines[5] = lines[5].replace(str(entry["time_ns"]).encode(), str(entry["time_ns"] + 1).encode())
    log.write_bytes(b"".join(lines))
    code, report = _verify(records, log)
    assert code == 1
    found = [(f["kind"], f["where"]) for f in report["findings"]]
    # The next line's prev no longer matches, and the edited (later) time is after the
    # generation time the records of that line's four rows received.
    assert found == [("chain_break", f"{log}:7")] + [
        ("mismatch", f"{records}:{n}") for n in range(21, 25)
    ]


def test_a_record_older_than_its_bytes_and_a_reused_digest_are_flagged(
    copies: tuple[Path, Path],
) -> None:
    records, log = copies
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    rows[7]["timestamp_ns"] = rows[7]["entropy_generated_ns"] - 1_000_000
    rows.append(dict(rows[50], request_serial=999))
    _write_jsonl(records, rows)
    code, report = _verify(records, log)
    assert code == 1
    found = {(f["kind"], f["where"]) for f in report["findings"]}
    assert found == {
        ("too_early", f"{records}:8"),
        ("duplicate", f"{records}:51"),
        ("duplicate", f"{records}:{len(rows)}"),
    }


def test_a_record_whose_bytes_came_from_the_fallback_is_not_covered(
    copies: tuple[Path, Path], short_tmp: Path
) -> None:
    records, log = copies
    # Nothing listens here: the primary fails and the system fallback serves, flagged.
    primary = QuantumGrpcSource(_settings(f"unix://{short_tmp / 'none.sock'}", "unary"))
    source = FallbackEntropySource(
        primary, EntropySourceRegistry.build("system", EntropySettings())
    )
    with source:
        block = source.fetch_block(2, ROW_BYTES)
    assert block.provenance.is_fallback
    assert len(block.provenance.row_digests) == 2  # computed client-side for local bytes
    extra = _records([block], first_serial=500)
    _write_jsonl(records, [json.loads(line) for line in records.read_text().splitlines()] + extra)
    code, report = _verify(records, log)
    assert code == 1
    assert _kinds(report) == {"fallback"}
    assert len(report["findings"]) == 2
    assert "not covered by the audit log" in report["findings"][0]["detail"]


def test_rows_that_do_not_divide_the_bytes_are_refused(
    spawn_server: Callable[..., ServerProcess], short_tmp: Path
) -> None:
    log = short_tmp / "audit.jsonl"
    server = spawn_server("--address", f"unix://{short_tmp / 'r.sock'}", "--audit-log", str(log))
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(
            "/qr_entropy.EntropyService/GetEntropy",
            request_serializer=EntropyRequest.SerializeToString,
            response_deserializer=EntropyResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(EntropyRequest(bytes_needed=100, sequence_id=1, rows=3), timeout=30)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "rows=3 must divide bytes_needed=100" in (caught.value.details() or "")
        # An older client sends no rows: one row, one digest.
        response = call(EntropyRequest(bytes_needed=100, sequence_id=7), timeout=30)
    assert server.terminate() == 0
    (line,) = log.read_bytes().splitlines()
    entry = json.loads(line)
    assert entry["digests"] == [row_digest(response.data)]
    assert entry["sequence_id"] == 7
    assert entry["time_ns"] == response.generation_timestamp_ns


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_a_server_killed_mid_stream_leaves_whole_lines_and_a_valid_chain(
    spawn_server: Callable[..., ServerProcess], short_tmp: Path, fsync: str
) -> None:
    log = short_tmp / "audit.jsonl"
    args = ("--address", f"unix://{short_tmp / 'k.sock'}", "--audit-log", str(log))
    server = spawn_server(*args, "--audit-fsync", fsync, "--audit-raw")
    blocks: list[EntropyBlock] = []
    stop = threading.Event()

    def stream() -> None:
        client = QuantumGrpcSource(_settings(server.address, "bidi_streaming"))
        try:
            while not stop.is_set():
                blocks.append(client.fetch_block(8, ROW_BYTES))
        except Exception:  # the server was killed under the fetch: expected
            pass
        finally:
            client.close()

    fetcher = threading.Thread(target=stream, daemon=True)
    fetcher.start()
    deadline = time.monotonic() + 60
    while len(blocks) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(blocks) >= 20
    server.kill()  # SIGKILL while the client keeps asking
    stop.set()
    fetcher.join(60)
    # SIGKILL can cut a large write() short (here lines of ~220 KB with --audit-raw):
    # then the file ends in part of a line whose response was never sent.
    whole = log.read_bytes().split(b"\n")[:-1]
    assert len(whole) >= len(blocks)  # every answered fetch was logged first
    assert all(json.loads(line)["index"] == i for i, line in enumerate(whole))
    records = _write_jsonl(short_tmp / "records.jsonl", _records(blocks))
    code, report = _verify(records, log)
    assert code == 0, report["findings"]
    # A restart drops a partial line (one is made here if the kill left none) and
    # continues the chain from the last whole line.
    if log.read_bytes().endswith(b"\n"):
        with log.open("ab") as handle:
            handle.write(b'{"v":1,"index":')
    restarted = spawn_server(*args, "--audit-fsync", fsync)
    client = QuantumGrpcSource(_settings(restarted.address, "unary"))
    try:
        later = [client.fetch_block(2, ROW_BYTES) for _ in range(3)]
    finally:
        client.close()
    assert restarted.terminate() == 0
    assert "event=audit_log_truncated" in restarted.log()
    data = log.read_bytes()
    assert data.endswith(b"\n")
    assert all(json.loads(line)["index"] == i for i, line in enumerate(data.splitlines()))
    _write_jsonl(records, _records(blocks) + _records(later, first_serial=1000))
    code, report = _verify(records, log)
    assert code == 0, report["findings"]
    assert report["log_lines"] == len(log.read_bytes().splitlines())


def test_a_server_whose_log_is_in_use_does_not_start(short_tmp: Path) -> None:
    log = short_tmp / "audit.jsonl"
    with AuditLog(log):  # another server holds it
        result = subprocess.run(
            [
                *(sys.executable, "-m", "qr_grpc.server"),
                *("--address", f"unix://{short_tmp / 'u.sock'}", "--audit-log", str(log)),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert result.returncode == 2
    assert "event=startup_failed" in result.stderr
    assert "in use by another process" in result.stderr


def test_bytes_that_cannot_be_logged_are_not_served(
    start_server: Callable[..., EntropyServer],
    make_client: Callable[..., QuantumGrpcSource],
    short_tmp: Path,
) -> None:
    log = AuditLog(short_tmp / "audit.jsonl")
    server = start_server(
        EntropySourceRegistry.build("system", EntropySettings()),
        f"unix://{short_tmp / 'c.sock'}",
        audit_log=log,
    )
    client = make_client(server.address, grpc_mode="unary", grpc_retry_count=0)
    client.fetch_block(2, 64)
    log.close()  # as after a failed write: every later append is refused
    with pytest.raises(EntropyUnavailableError, match="audit log unavailable"):
        client.fetch_block(2, 64)
    assert len((short_tmp / "audit.jsonl").read_bytes().splitlines()) == 1
