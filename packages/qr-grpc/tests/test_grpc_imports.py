"""Importing qr_grpc has no side effects and pulls in nothing it must not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import os, sys, threading

def sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:  # the directory's own descriptor is gone by the time it is read
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count

before_threads, before_sockets = threading.active_count(), sockets()
import qr_grpc, qr_grpc.server, qr_grpc.source
from qr_entropy import EntropySourceRegistry, EntropySettings
cls = EntropySourceRegistry.get("quantum_grpc")
source = cls.from_settings(EntropySettings())   # construction opens nothing either
assert threading.active_count() == before_threads, threading.enumerate()
assert sockets() == before_sockets
forbidden = [m for m in ("qr_core", "qr_vllm", "torch", "vllm") if m in sys.modules]
assert not forbidden, forbidden
source.close()
print("clean")
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count sockets")
def test_import_and_construction_open_no_threads_or_sockets() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


CLIENT_ONLY = """
import sys
from importlib.metadata import entry_points
(ep,) = [ep for ep in entry_points(group="qr_entropy.sources") if ep.name == "quantum_grpc"]
cls = ep.load()
assert cls.__name__ == "QuantumGrpcSource", cls
server_side = ("qr_grpc.server", "qr_grpc._logfmt", "grpc_health.v1.health")
loaded = [name for name in server_side if name in sys.modules]
assert not loaded, loaded
import qr_grpc
assert "serve" in dir(qr_grpc) and "qr_grpc.server" not in sys.modules
serve = qr_grpc.serve                      # first access imports the server
assert "qr_grpc.server" in sys.modules and serve is sys.modules["qr_grpc.server"].serve
from qr_grpc import EntropyServer
assert EntropyServer is sys.modules["qr_grpc.server"].EntropyServer
try:
    qr_grpc.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc), exc
else:
    raise AssertionError("no AttributeError")
print("lazy")
"""


def test_client_entry_point_does_not_import_the_server() -> None:
    """Loading ``quantum_grpc`` leaves the server and grpc-health's servicer unimported."""
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"


def test_benchmark_quick_run() -> None:
    """The benchmark runs end to end (its numbers are reported, never asserted)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_grpc.py"), "--quick"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for mode in ("unary", "server_streaming", "bidi_streaming"):
        for transport in ("tcp", "unix"):
            assert any(line.split()[:2] == [mode, transport] for line in table.splitlines()), (
                mode,
                transport,
                table,
            )
    assert "os.urandom (floor)" in table
    assert "1,310,720" in table
    assert "target: bidi_streaming/unix" in table
