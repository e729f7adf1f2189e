"""qr_vllm.demo: the ``qr-vllm demo`` and the scaffolding it shares with tests and benchmarks.

Not part of the processor's API: a tiny offline model (`build_tiny_model`),
in-process engine helpers (`closing_engine`, `environment`, `read_records`), the
reference entropy server as a child process (`EntropyServerProcess`), and the
demo itself (`run_demo`). Importing it imports neither vLLM nor torch.
"""

from __future__ import annotations

from qr_vllm.demo._engine import closing_engine, environment, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess
from qr_vllm.demo._run import DEFAULT_PROMPTS, DemoOptions, run_demo
from qr_vllm.demo._tiny_model import TinyModelSpec, build_tiny_model, default_cache_dir

__all__ = [
    "DEFAULT_PROMPTS",
    "DemoOptions",
    "EntropyServerProcess",
    "TinyModelSpec",
    "build_tiny_model",
    "closing_engine",
    "default_cache_dir",
    "environment",
    "read_records",
    "run_demo",
]
