"""Slow is told from dead, against real server processes: kills, stops, load, blips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import ServerProcess, expected_bytes, start_handler_server
from qr_entropy import EntropySettings, EntropySourceRegistry, FallbackEntropySource
from qr_grpc import (
    CircuitState,
    GrpcEntropyUnavailableError,
    GrpcSettings,
    QuantumGrpcSource,
)
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc.server import SERVICE_NAME

SpawnServer = Callable[..., ServerProcess]
MakeClient = Callable[..., QuantumGrpcSource]

# A deadline no fetch in these tests reaches unless the test is about reaching it: a
# failure that comes back well before it did not wait on a timer.
LONG_DEADLINE_MS = 30_000.0


def _address(kind: str, tmp: Path) -> str:
    return f"unix://{tmp / 'e.sock'}" if kind == "unix" else "127.0.0.1:0"


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Both cores saturated by bounded busy loops (each stops by itself after 120 s)."""
    loop = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", loop]) for _ in range(max(2, os.cpu_count() or 2))
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_killed_server_fails_the_fetch_at_once_not_at_the_deadline(
    kind: str,
    mode: str,
    short_tmp: Path,
    spawn_server: SpawnServer,
    make_client: MakeClient,
) -> None:
    server = spawn_server("--address", _address(kind, short_tmp))
    client = make_client(server.address, grpc_mode=mode, grpc_timeout_ms=LONG_DEADLINE_MS)
    assert len(client.get_random_bytes(1024)) == 1024  # connected (and the stream open)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    started = time.perf_counter()
    with pytest.raises(GrpcEntropyUnavailableError) as caught:
        client.get_random_bytes(1024)
    took = time.perf_counter() - started
    print(f"\n{mode}/{kind}: killed server detected in {took * 1000:.1f} ms")
    # The mechanism: a refused or lost connection, retried and failed, never a timer.
    assert "UNAVAILABLE" in str(caught.value) or "closed" in str(caught.value)
    assert "deadline" not in str(caught.value)
    # Connection refused is immediate (a few ms here): within 100 ms, or within 1 s on a
    # machine whose run queue is longer than twice its cores, where a thread may wait
    # that long for a core. Either is far from the 30 s deadline a timer would take.
    overloaded = os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
    assert took < (1.0 if overloaded else 0.1), (took, os.getloadavg())


@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_stopped_server_fails_at_the_configured_deadline_then_recovers(
    mode: str, short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server("--address", _address("unix", short_tmp))
    deadline_s = 1.5
    client = make_client(
        server.address, grpc_mode=mode, grpc_timeout_ms=deadline_s * 1000, grpc_retry_count=2
    )
    assert len(client.get_random_bytes(512)) == 512
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(GrpcEntropyUnavailableError, match=r"within the 1500 ms deadline"):
            client.get_random_bytes(512)
        took = time.monotonic() - started
        # Not before the deadline (a hung server looks like a slow one until then), and
        # not much after it.
        assert deadline_s <= took < deadline_s + 1.5, took
        assert client.circuit_breaker.consecutive_failures == 1  # one fetch, one failure
    finally:
        server.proc.send_signal(signal.SIGCONT)
    # The server resumes: its late answer to the abandoned request is dropped, and the
    # next fetch gets its own bytes.
    for _ in range(3):
        assert len(client.get_random_bytes(777)) == 777
    assert client.circuit_breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("mode", ["unary", "server_streaming", "bidi_streaming"])
def test_slow_jittery_server_on_busy_cores_never_falls_back_with_default_settings(
    mode: str, short_tmp: Path, spawn_server: SpawnServer, busy_cores: None
) -> None:
    server = spawn_server(
        "--address", _address("unix", short_tmp), "--delay-ms", "2", "--delay-jitter-ms", "20"
    )
    # Default settings (not the test helper's longer deadline).
    client = QuantumGrpcSource(
        GrpcSettings(grpc_server_address=server.address, grpc_mode=mode)  # type: ignore[arg-type]
    )
    guarded = FallbackEntropySource(
        client, EntropySourceRegistry.build("system", EntropySettings())
    )
    try:
        for _ in range(150):
            block = guarded.fetch_block(32, 20_480)
            assert not block.provenance.is_fallback, block.provenance.fallback_reason
        assert guarded.fallback_count == 0
        assert client.circuit_breaker.consecutive_failures == 0
    finally:
        guarded.close()


def test_the_breaker_counts_fetches_not_attempts(short_tmp: Path, make_client: MakeClient) -> None:
    """A real peer server that drops every other call as UNAVAILABLE (a blip)."""
    calls = {"n": 0}

    def blippy(request: EntropyRequest, context: grpc.ServicerContext) -> EntropyResponse:
        calls["n"] += 1
        if calls["n"] % 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "blip")
        return EntropyResponse(data=expected_bytes(request.bytes_needed))

    address = f"unix://{short_tmp / 'blip.sock'}"
    peer = start_handler_server(address, SERVICE_NAME, unary={"GetEntropy": blippy})
    try:
        # One failed attempt per fetch, and a breaker that opens on the first failure:
        # it must stay closed, as every fetch succeeds on its retry.
        client = make_client(address, grpc_retry_count=1, cb_max_consecutive_failures=1)
        for n in (100, 200, 300, 400, 500):
            assert client.get_random_bytes(n) == expected_bytes(n)
        assert calls["n"] == 10
        assert client.circuit_breaker.state is CircuitState.CLOSED
        assert client.circuit_breaker.consecutive_failures == 0
    finally:
        peer.stop(0)

    # A dead server: three attempts per fetch, each refused, count as one failure each.
    dead = make_client(
        f"unix://{short_tmp / 'none.sock'}", grpc_retry_count=2, cb_max_consecutive_failures=3
    )
    for expected in (1, 2):
        with pytest.raises(GrpcEntropyUnavailableError, match="after 3 attempt"):
            dead.get_random_bytes(16)
        assert dead.circuit_breaker.consecutive_failures == expected
        assert dead.circuit_breaker.state is CircuitState.CLOSED
