"""Importing qr_core, and selecting on numpy, must not drag in heavy or foreign packages."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("torch", "grpc", "vllm", "qr_entropy", "qr_grpc", "qr_vllm")

SCRIPT = """
import json, sys
import numpy as np
import qr_core
result = qr_core.TokenSelector().select_batch(
    np.zeros((2, 8), dtype=np.float32), temperature=0.7, top_k=3, top_p=0.9, u=0.5
)
qr_core.EDTTemperatureStrategy().compute_batch(np.zeros((2, 8)))
qr_core.ZScoreMeanAmplifier().amplify(b"abc")
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""


def test_import_and_numpy_selection_load_nothing_forbidden() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    assert "qr_core" in loaded
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
