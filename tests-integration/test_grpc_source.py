"""The qr-grpc reference server on a Unix socket (bidi) as the engine's entropy source."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess

pytestmark = pytest.mark.vllm


def _long(**extra: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=120, ignore_eos=True, extra_args=extra or None)


def _kill_when(records: Path, count: int, server: EntropyServerProcess) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 60
        while len(read_records(records)) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _engine_on_grpc(
    tiny_model: Path, records: Path, **settings: str
) -> Iterator[tuple[Any, EntropyServerProcess]]:
    """An in-process engine whose source is the reference server, bidi on a Unix socket."""
    server = EntropyServerProcess().start()
    try:
        with in_process_llm(
            tiny_model,
            QR_RECORDS_PATH=str(records),
            QR_SAMPLE_COUNT="2048",
            QR_GRPC_TIMEOUT_MS="500",
            **server.environment("bidi_streaming"),
            **settings,
        ) as llm:
            yield llm, server
    finally:
        server.stop()


def test_generation_survives_a_killed_server_with_flagged_fallback(
    tiny_model: Path, tmp_path: Path
) -> None:
    records = tmp_path / "grpc.jsonl"
    with _engine_on_grpc(tiny_model, records) as (llm, server):
        outs = llm.generate(["Once upon a time"] * 2, _long(qr_label="live"), use_tqdm=False)
        rows = read_records(records, 240)
        assert len(rows) == sum(len(o.outputs[0].token_ids) for o in outs) == 240
        assert {r["entropy_source"] for r in rows} == {"quantum_grpc"}
        assert not any(r["is_fallback"] for r in rows)

        killer = _kill_when(records, 240 + 20, server)
        outs = llm.generate(["The weather today is"] * 2, _long(qr_label="killed"), use_tqdm=False)
        killer.join(5)
        assert all(len(o.outputs[0].token_ids) == 120 for o in outs)
        rows = [r for r in read_records(records, 480) if r["label"] == "killed"]
        assert len(rows) == 240
        assert any(not r["is_fallback"] for r in rows)
        fallback = [r for r in rows if r["is_fallback"]]
        assert fallback, "no token was flagged after the server died"
        assert all(r["entropy_source"] == "system" and r["fallback_reason"] for r in fallback)
        # The engine keeps serving.
        again = llm.generate(["A random number is"], _long(qr_label="after"), use_tqdm=False)
        assert len(again[0].outputs[0].token_ids) == 120


def test_error_mode_ends_the_requests_and_the_engine_serves_on(
    tiny_model: Path, tmp_path: Path
) -> None:
    records = tmp_path / "error.jsonl"
    with _engine_on_grpc(tiny_model, records, QR_FALLBACK_MODE="error") as (llm, server):
        from vllm import SamplingParams

        killer = _kill_when(records, 20, server)
        params = SamplingParams(max_tokens=120, extra_args={"qr_label": "doomed"})
        outs = llm.generate(["Once upon a time"] * 2, params, use_tqdm=False)
        killer.join(5)
        for out in outs:
            assert len(out.outputs[0].token_ids) < 120
            assert out.outputs[0].finish_reason == "stop"
        rows = read_records(records, sum(len(o.outputs[0].token_ids) for o in outs))
        failed = [r for r in rows if r["status"] == "failed"]
        assert failed
        assert all(r["error"] and r["u"] is None for r in failed)
        # A fresh server on the same socket: new requests succeed on the same engine.
        server.process = None
        import subprocess
        import sys

        with open(server.log_path or tmp_path / "log", "ab") as log:
            server.process = subprocess.Popen(
                [sys.executable, "-m", "qr_grpc.server", "--address", server.address],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ok = llm.generate(
                ["Science is"], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False
            )
            if len(ok[0].outputs[0].token_ids) == 8:
                break
            time.sleep(0.5)
        assert len(ok[0].outputs[0].token_ids) == 8
