"""`import qr_entropy` loads no heavy or sibling package and has no side effects."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys, threading
import qr_entropy
from qr_entropy import cli  # the CLI module too: typer and rich only
forbidden = ["torch", "grpc", "vllm", "qr_core", "qr_grpc", "qr_vllm", "scipy"]
print(json.dumps({
    "loaded": sorted(m for m in forbidden if m in sys.modules),
    "threads": threading.active_count(),
    "all": sorted(qr_entropy.__all__),
}))
"""


def test_import_loads_nothing_forbidden_and_starts_no_thread() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout)
    assert report["loaded"] == []
    assert report["threads"] == 1
    for name in ("EntropySource", "FallbackEntropySource", "build_entropy_source", "Provenance"):
        assert name in report["all"]


def test_public_surface_is_exactly_all() -> None:
    import qr_entropy

    for name in qr_entropy.__all__:
        assert hasattr(qr_entropy, name), name
    assert qr_entropy.__version__ == "0.1.0"
