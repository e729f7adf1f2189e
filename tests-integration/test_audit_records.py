"""Records of a real engine against the reference server's audit log, and pooling.

A real in-process engine draws its entropy from ``qr-entropy-server --audit-log`` (bidi
over a Unix socket) and writes records to a path with ``{engine_id}``; the real
``qr-entropy audit verify`` console script checks the records against the log. Then
the server is killed: the tokens served by the fallback are flagged. A second engine
(a restart) writes its own file, and the pooled records never collide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess

pytestmark = pytest.mark.vllm

VERIFY = [str(Path(sys.executable).parent / "qr-entropy"), "audit", "verify"]


def _params(label: str, tokens: int = 120) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=tokens, ignore_eos=True, extra_args={"qr_label": label})


def _verify(records: list[Path], log: Path) -> tuple[int, dict[str, Any]]:
    command = [*VERIFY, "--log", str(log), "--json"]
    for path in records:
        command += ["--records", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _only_file(folder: Path, pattern: str) -> Path:
    deadline = time.monotonic() + 60
    while not (files := sorted(folder.glob(pattern))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(files) == 1, files
    return files[0]


def test_engine_records_verify_against_the_audit_log_and_pool_across_restarts(
    tiny_model: Path, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    pattern = str(records_dir / "run-{engine_id}-{dp_rank}.jsonl")
    server = EntropyServerProcess(extra_args=("--audit-log", str(log))).start()
    try:
        with in_process_llm(
            tiny_model,
            QR_RECORDS_PATH=pattern,
            QR_SAMPLE_COUNT="2048",
            QR_GRPC_TIMEOUT_MS="2000",
            **server.environment("bidi_streaming"),
        ) as llm:
            outs = llm.generate(["Once upon a time"] * 2, _params("audited"), use_tqdm=False)
            first = _only_file(records_dir, "run-*-0.jsonl")
            rows = read_records(first, 240)
            assert len(rows) == sum(len(o.outputs[0].token_ids) for o in outs) == 240
            engine_ids = {r["engine_id"] for r in rows}
            assert len(engine_ids) == 1
            assert engine_ids.pop() in first.name
            assert all(r["records_schema"] == 2 and r["dp_rank"] is None for r in rows)
            assert all(r["signal_amplifier"] == "randomized_pit" for r in rows)
            assert all((r["s_bytes"], r["v_bytes"]) == (2048, 7) for r in rows)
            assert all(r["entropy_sequence_id"] > 0 and r["entropy_generated_ns"] > 0 for r in rows)
            assert len({r["entropy_digest"] for r in rows}) == 240

            code, report = _verify([first], log)
            assert code == 0, report["findings"]
            assert report["tokens_verified"] == 240

            # The server dies: the fallback's tokens are flagged, never passed as audited.
            server.kill()
            llm.generate(["The weather today is"], _params("after-kill", 16), use_tqdm=False)
            rows = read_records(first, 256)
            fallback = [r for r in rows if r["is_fallback"]]
            assert fallback
            code, report = _verify([first], log)
            assert code == 1
            kinds = {f["kind"] for f in report["findings"]}
            assert kinds == {"fallback"}
            assert len(report["findings"]) == len(fallback)
    finally:
        server.stop()

    # A restarted engine (here on the seeded mock source) writes a file of its own.
    with in_process_llm(
        tiny_model,
        QR_RECORDS_PATH=pattern,
        QR_ENTROPY_SOURCE_TYPE="mock_uniform",
        QR_MOCK_SEED="3",
        QR_SAMPLE_COUNT="256",
    ) as llm:
        llm.generate(["Once upon a time"] * 2, _params("restarted", 8), use_tqdm=False)
        deadline = time.monotonic() + 60
        while len(list(records_dir.glob("run-*.jsonl"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        files = sorted(records_dir.glob("run-*.jsonl"))
        assert len(files) == 2
        second = next(f for f in files if f != first)
        restarted = read_records(second, 16)
    pooled = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(pooled) == 256 + 16
    # request_serial restarts at 1 in every engine; with engine_id the key is unique.
    keys = {(r["engine_id"], r["request_serial"], r["sequence_number"]) for r in pooled}
    assert len(keys) == len(pooled)
    assert {r["request_serial"] for r in restarted} & {r["request_serial"] for r in rows}
    assert len({r["engine_id"] for r in pooled}) == 2
