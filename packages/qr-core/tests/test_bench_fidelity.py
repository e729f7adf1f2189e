"""The fidelity benchmark's --quick path runs and prints both tables, so the script cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_fidelity.py"


def test_quick_run_prints_both_tables() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.startswith("2k randn*3")]
    assert len(rows) == 8  # 2 filter settings x 4 sample counts
    assert all(float(row.split()[-3]) < 1e-9 for row in rows)  # randomized_pit's TVD
    assert any(line.startswith("randomized_pit") and "x" in line for line in lines)
