"""Named sources in one real engine, each source a real reference server with an audit log.

``QR_SOURCES`` names two gRPC sources, each a ``qr-entropy-server --audit-log`` child
on its own Unix socket. Interleaved requests pick one with ``qr_source``. The
servers' own logs show one request per source per decode step, holding exactly the
rows of that source's requests in that step, and the pooled records verify against
both logs with ``qr-entropy audit verify``. An unknown ``qr_source`` is refused with
the known names, and the engine serves on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records
from qr_vllm.demo._engine import environment
from qr_vllm.demo._entropy_server import EntropyServerProcess
from qr_vllm.processor import QRSamplerLogitsProcessor

pytestmark = pytest.mark.vllm

VERIFY = [str(Path(sys.executable).parent / "qr-entropy"), "audit", "verify"]


def _params(source: str, label: str, tokens: int = 24) -> Any:
    from vllm import SamplingParams

    extra = {"qr_source": source, "qr_label": label}
    return SamplingParams(max_tokens=tokens, ignore_eos=True, extra_args=extra)


def test_two_named_sources_one_fetch_each_per_step(tiny_model: Path, tmp_path: Path) -> None:
    logs = {name: tmp_path / f"{name}.audit.jsonl" for name in ("qrng", "control")}
    servers = {
        name: EntropyServerProcess(extra_args=("--audit-log", str(log))).start()
        for name, log in logs.items()
    }
    records = tmp_path / "records.jsonl"
    sources = {
        name: {
            "entropy_source_type": "quantum_grpc",
            "grpc_server_address": server.address,
            "grpc_mode": "bidi_streaming",
            "grpc_timeout_ms": 5000,
            "fallback_mode": "error",
        }
        for name, server in servers.items()
    }
    try:
        with (
            in_process_llm(
                tiny_model,
                QR_SOURCES=json.dumps(sources),
                QR_ENTROPY_SOURCE_TYPE="system",
                QR_SAMPLE_COUNT="512",
                QR_RECORDS_PATH=str(records),
            ) as llm,
            environment({"QR_SOURCES": json.dumps(sources)}),
        ):
            # Admission reads the settings where requests arrive (here, this process),
            # once: the same QR_SOURCES as the engine, as in a deployment.
            QRSamplerLogitsProcessor._admission_resolver = None
            arms = ["qrng", "control", "control", "qrng", "qrng", "control"]
            params = [_params(arm, f"{arm}-{i}") for i, arm in enumerate(arms)]
            outs = llm.generate(["Once upon a time"] * len(arms), params, use_tqdm=False)
            total = sum(len(o.outputs[0].token_ids) for o in outs)
            assert total == 24 * len(arms)
            rows = read_records(records, total)
            assert len(rows) == total

            # Unknown name: refused with the known ones, and the engine serves on.
            from vllm.exceptions import VLLMValidationError

            with pytest.raises(VLLMValidationError, match="known: default, qrng, control"):
                llm.generate(["Hello"], _params("qnrg", "typo"), use_tqdm=False)
            again = llm.generate(["Hello"], _params("control", "control-after", 4), use_tqdm=False)
            assert len(again[0].outputs[0].token_ids) == 4
            rows = read_records(records, total + 4)
            assert len(rows) == total + 4
    finally:
        QRSamplerLogitsProcessor._admission_resolver = None
        for server in servers.values():
            server.stop()

    for row in rows:
        assert row["qr_source"] == row["label"].split("-")[0]
        assert row["entropy_source"] == "quantum_grpc"
        assert not row["is_fallback"]
    for name, log in logs.items():
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        mine = [r for r in rows if r["qr_source"] == name]
        # One request per step: the tokens chosen in one step share one response.
        per_request = Counter(r["entropy_sequence_id"] for r in mine)
        per_step = Counter(r["timestamp_ns"] for r in mine)
        assert sorted(per_request.values()) == sorted(per_step.values())
        assert len(lines) == len(per_step)
        # Each logged request carried exactly this source's rows of its step.
        logged = {line["sequence_id"]: len(line["digests"]) for line in lines}
        assert logged == dict(per_request)
        digests = {d for line in lines for d in line["digests"]}
        assert {r["entropy_digest"] for r in mine} == digests
    # Both arms ran in the same steps (interleaved, concurrently).
    steps = {name: {r["timestamp_ns"] for r in rows if r["qr_source"] == name} for name in logs}
    assert steps["qrng"] & steps["control"]

    command = [*VERIFY, "--records", str(records), "--json"]
    for log in logs.values():
        command += ["--log", str(log)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["findings"]
    assert report["tokens_verified"] == len(rows)
