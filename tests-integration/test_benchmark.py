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
