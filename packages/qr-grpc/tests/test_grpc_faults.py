"""Failure handling against real server processes: kills, slow servers, the breaker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_helpers import MODES, ServerProcess, fetch_in_background
from qr_entropy import (
    EntropySettings,
    EntropySource,
    EntropySourceRegistry,
    FallbackEntropySource,
)
from qr_grpc import (
    CircuitOpenError,
    CircuitState,
    EntropyServer,
    GrpcEntropyUnavailableError,
    QuantumGrpcSource,
)

SpawnServer = Callable[..., ServerProcess]
MakeClient = Callable[..., QuantumGrpcSource]
StartServer = Callable[..., EntropyServer]


@pytest.mark.parametrize("mode", MODES)
def test_server_killed_between_fetches_then_restarted(
    mode: str,
    short_tmp: Path,
    spawn_server: SpawnServer,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"unix://{short_tmp / 'k.sock'}"
    server = spawn_server("--address", address)
    client = make_client(server.address, grpc_mode=mode, grpc_retry_count=1)
    assert len(client.get_random_bytes(256)) == 256
    server.kill()
    caplog.set_level(logging.DEBUG, logger="qr_grpc")
    with pytest.raises(GrpcEntropyUnavailableError, match=r"UNAVAILABLE|closed|cancelled"):
        client.get_random_bytes(256)
    # A transport failure rebuilds the channel; the same source works once a server is back.
    assert "rebuilding grpc channel" in caplog.text
    spawn_server("--address", address)
    assert len(client.get_random_bytes(256)) == 256


@pytest.mark.parametrize("mode", MODES)
def test_server_killed_mid_request_then_fallback_flags_it(
    mode: str, short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server("--address", "127.0.0.1:0", "--delay-ms", "600")
    client = make_client(server.address, grpc_mode=mode, grpc_timeout_ms=20_000)
    assert len(client.get_random_bytes(64)) == 64  # the stream (if any) is open now
    started = time.monotonic()
    pending = fetch_in_background(client, 20_480)
    time.sleep(0.2)  # the request is in flight, the server is sleeping before answering
    server.kill()
    error = pending.exception(timeout=15)  # raises TimeoutError if the fetch hangs
    assert isinstance(error, GrpcEntropyUnavailableError), repr(error)
    assert time.monotonic() - started < 10  # failed on the broken connection, not a timeout

    system = EntropySourceRegistry.build("system", EntropySettings())
    guarded = FallbackEntropySource(client, system)
    block = guarded.fetch_block(2, 1024)
    assert block.data.shape == (2, 1024)
    assert block.provenance.is_fallback
    assert block.provenance.source == "system"
    assert "quantum_grpc" in block.provenance.fallback_reason
    assert guarded.fallback_count == 1


@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_slow_server_waited_for_hung_one_fails_at_the_deadline_breaker_and_recovery(
    mode: str,
    short_tmp: Path,
    start_server: StartServer,
    system_source: EntropySource,
    make_client: MakeClient,
) -> None:
    # In-process servers (real sockets, the server's own --delay-ms option): this test
    # restarts the server three times and a fresh interpreter costs seconds each.
    address = f"unix://{short_tmp / 'slow.sock'}"
    slow = start_server(system_source, address, delay_ms=150)
    deadline_ms = 1000
    client = make_client(
        address,
        grpc_mode=mode,
        grpc_timeout_ms=deadline_ms,
        grpc_retry_count=2,
        cb_recovery_window_s=0.6,
        cb_max_consecutive_failures=3,
    )
    breaker = client.circuit_breaker

    # A slow but steady server is served, however fast it was before: no adaptive
    # budget cuts it short.
    for _ in range(4):
        assert len(client.get_random_bytes(512)) == 512
    p99 = breaker.p99_s(512)
    assert p99 is not None
    assert p99 >= 0.15

    # The device becomes slower than the deadline: every fetch fails at the configured
    # deadline exactly as written (never before it), once per fetch, and the breaker
    # opens after three failed fetches.
    slow.stop(0)
    slower = start_server(system_source, address, delay_ms=4000)
    elapsed: list[float] = []
    errors: list[str] = []
    for _ in range(6):
        started = time.monotonic()
        try:
            client.get_random_bytes(512)
        except CircuitOpenError:
            break
        except GrpcEntropyUnavailableError as error:
            elapsed.append(time.monotonic() - started)
            errors.append(str(error))
    else:
        pytest.fail(f"breaker never opened: {errors}")
    assert len(elapsed) == 3, errors
    for took in elapsed:
        assert deadline_ms / 1000 <= took < deadline_ms / 1000 + 2.0, (elapsed, errors)
    assert breaker.state is CircuitState.OPEN
    assert all(f"within the {deadline_ms} ms deadline" in e for e in errors), errors

    # Open: refused at once, without touching the network.
    started = time.monotonic()
    with pytest.raises(CircuitOpenError, match="next probe in"):
        client.get_random_bytes(512)
    assert time.monotonic() - started < 0.1
    assert not client.is_available

    # Half-open: after the window exactly one of several concurrent fetches is let
    # through (and fails at the deadline against the still-slow server); the rest are
    # refused.
    time.sleep(0.7)
    assert client.is_available
    results: list[str] = []
    lock = threading.Lock()

    def probe() -> None:
        try:
            client.get_random_bytes(512)
            outcome = "ok"
        except CircuitOpenError:
            outcome = "refused"
        except GrpcEntropyUnavailableError:
            outcome = "failed"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == ["failed", "refused", "refused", "refused"]
    assert breaker.state is CircuitState.OPEN

    # The device comes back: the next probe succeeds and closes the breaker.
    slower.stop(0)
    start_server(system_source, address)
    time.sleep(0.7)
    assert len(client.get_random_bytes(512)) == 512
    assert breaker.state is CircuitState.CLOSED
    for _ in range(3):
        assert len(client.get_random_bytes(512)) == 512


def test_breaker_open_engages_the_fallback(
    short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    client = make_client(
        f"unix://{short_tmp / 'none.sock'}",
        grpc_retry_count=0,
        cb_max_consecutive_failures=2,
        cb_recovery_window_s=60,
    )
    guarded = FallbackEntropySource(
        client, EntropySourceRegistry.build("system", EntropySettings())
    )
    reasons = [guarded.fetch(16).provenance.fallback_reason for _ in range(3)]
    assert "UNAVAILABLE" in reasons[0]
    assert "circuit breaker is open" in reasons[2]
    assert guarded.fallback_count == 3
