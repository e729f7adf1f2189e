"""The selection benchmark's --quick path runs, so the script cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_selection.py"


def test_quick_run_prints_the_table() -> None:
    pytest.importorskip("vllm")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert any(line.startswith("case") and "qr/vllm" in line for line in lines)
    assert sum(line.startswith("B=4 V=32000") for line in lines) == 2
