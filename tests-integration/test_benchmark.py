"""The processor benchmark runs (--quick) and prints its tables; speed is not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]


def test_bench_processor_quick() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_processor.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in (
        "(a) per-step time",
        "(m) per-step time with metrics on vs off",
        "(f) 64 x 20,480 bytes",
        "(b) end-to-end decode",
    ):
        assert heading in done.stdout
    assert "151936" in done.stdout


def test_gpu_check_cpu_smoke() -> None:
    # The GPU check, reduced, on the CPU (the processor forced onto the accelerator's
    # path): it starts engines, and fails (exit 1) when a target is missed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in (
        "(1) host syncs per steady-state step",
        "(2) entropy requests sent before the logits existed",
        "(3) CPU recomputation",
        "(4) ms per decode step",
        "(5) records against tokens",
        "(6) raw logprobs",
    ):
        assert heading in done.stdout
    assert "0 target(s) missed" in done.stdout
