"""The default multiprocess engine, and ``qr-vllm demo`` end to end (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True)
        outs = llm.generate(["Once upon a time", "The quick brown"],
                            SamplingParams(max_tokens=6, ignore_eos=True), use_tqdm=False)
        print("RESULT", json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update(extra)
    return env


def test_multiprocess_engine_writes_records_from_the_engine_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    script = tmp_path / "gen.py"
    script.write_text(_SCRIPT)
    records = tmp_path / "mp.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model)],
        env=_env(QR_ENTROPY_SOURCE_TYPE="system", QR_RECORDS_PATH=str(records)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    tokens = json.loads(line[len("RESULT ") :])
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(rows) == 12
    assert sorted(r["token_id"] for r in rows) == sorted(t for seq in tokens for t in seq)


def test_demo_prints_the_table_and_writes_records(tmp_path: Path) -> None:
    records = tmp_path / "demo.jsonl"
    qr_vllm = Path(sys.executable).with_name("qr-vllm")
    done = subprocess.run(
        [str(qr_vllm), "demo", "--max-tokens", "4", "--records", str(records)],
        env=_env(COLUMNS="160"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for header in ("token", "u", "rank", "probability", "source", "fallback"):
        assert header in out
    assert "quantum_grpc" in out
    assert "records for 12 generated tokens" in out
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(rows) == 12
    assert {r["entropy_source"] for r in rows} == {"quantum_grpc"}
    assert {r["session"] for r in rows} == {"demo"}
