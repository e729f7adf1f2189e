"""No fallback under load: the OpenAI server, the reference gRPC server, both cores busy.

The gRPC client's default settings must not time out a healthy server because the
host is busy: 20,000 tokens over 32 concurrent streams, with bounded busy loops
saturating every core, show no fallback and no failed token in the records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port, read_records
from qr_vllm.demo import EntropyServerProcess

pytestmark = pytest.mark.vllm

TOKENS = 20_000
STREAMS = 32
MAX_TOKENS = 200  # per request; the tiny model's context is 256


@contextlib.contextmanager
def busy_cores(seconds: float) -> Iterator[None]:
    """One bounded busy loop per core (each ends by itself after ``seconds``)."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", loop])
        for _ in range(max(2, len(os.sched_getaffinity(0))))
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def openai_server_with(model: Path, log: Path, env_extra: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update(env_extra)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the OpenAI server exited: " + log.read_text()[-3000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the OpenAI server did not start: " + log.read_text()[-3000:])
            time.sleep(1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.timeout(2400)
def test_no_fallback_under_load_with_default_grpc_settings(
    tiny_model: Path, tmp_path: Path
) -> None:
    import openai

    records = tmp_path / "records.jsonl"
    with EntropyServerProcess() as entropy:
        env = {
            **entropy.environment("bidi_streaming"),
            "QR_RECORDS_PATH": str(records),
            "QR_LOG_LEVEL": "none",
        }
        with openai_server_with(tiny_model, tmp_path / "server.log", env) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=600)
            model = client.models.list().data[0].id

            def stream_one(i: int) -> int:
                stream = client.completions.create(
                    model=model,
                    prompt=f"Story {i}: once upon a time",
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    extra_body={"ignore_eos": True, "vllm_xargs": {"qr_label": f"load-{i}"}},
                )
                return sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text)

            requests = -(-TOKENS // MAX_TOKENS)
            with busy_cores(1800), ThreadPoolExecutor(STREAMS) as pool:
                list(pool.map(stream_one, range(requests)))
            rows = read_records(records, requests * MAX_TOKENS, timeout_s=60)

    ours = [r for r in rows if str(r.get("label", "")).startswith("load-")]
    assert len(ours) >= TOKENS
    bad = [r for r in ours if r["is_fallback"] or r["status"] != "ok"]
    assert not bad, (len(bad), bad[:3])
    assert {r["entropy_source"] for r in ours} == {"quantum_grpc"}
