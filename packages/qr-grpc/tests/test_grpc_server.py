"""The entropy server: CLI, health service, Unix socket housekeeping, shutdown, logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import KeyedSource, ServerProcess, address_for
from qr_entropy import EntropySource
from qr_grpc import EntropyServer, GrpcConfigError, GrpcSettings, QuantumGrpcSource
from qr_grpc.server import SERVICE_NAME, main

StartServer = Callable[..., EntropyServer]
MakeClient = Callable[..., QuantumGrpcSource]
SpawnServer = Callable[..., ServerProcess]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures the root logger, as a CLI should; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def health_status(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_standard_health_service(kind: str, short_tmp: Path, start_server: StartServer) -> None:
    server = start_server(KeyedSource(), address_for(kind, short_tmp), api_key="k")
    # Open to probes even when the entropy service needs a key.
    assert health_status(server.address.target) == "SERVING"
    assert health_status(server.address.target, SERVICE_NAME) == "SERVING"


def test_stale_socket_is_removed_and_live_or_foreign_files_are_not(
    short_tmp: Path, start_server: StartServer, system_source: EntropySource
) -> None:
    path = short_tmp / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves the file behind, as a killed server does
    assert path.exists()
    server = start_server(system_source, f"unix://{path}")
    assert health_status(server.address.target) == "SERVING"

    with pytest.raises(GrpcConfigError, match="another server is listening"):
        start_server(system_source, f"unix://{path}")
    server.stop(0)
    assert not path.exists()  # removed on stop

    regular = short_tmp / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(GrpcConfigError, match="not a socket"):
        start_server(system_source, f"unix://{regular}")
    assert regular.read_text() == "keep me"


def test_tcp_port_in_use_is_a_clear_error(
    start_server: StartServer, system_source: EntropySource
) -> None:
    server = start_server(system_source, "127.0.0.1:0")
    with pytest.raises(GrpcConfigError, match="cannot bind"):
        start_server(system_source, str(server.address))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_bytes_per_request": 0}, "max_bytes_per_request=0"),
        ({"delay_ms": -1}, "delay_ms=-1"),
        ({"max_workers": 0}, "max_workers=0"),
    ],
)
def test_bad_server_options(
    kwargs: dict[str, float], fragment: str, start_server: StartServer
) -> None:
    with pytest.raises(GrpcConfigError, match=fragment):
        start_server(KeyedSource(), "127.0.0.1:0", **kwargs)


def test_stop_is_idempotent_and_closes_a_source_it_owns(short_tmp: Path) -> None:
    from qr_grpc import serve

    closed: list[bool] = []

    class Owned(KeyedSource):
        def close(self) -> None:
            closed.append(True)

    with serve(Owned(), address_for("unix", short_tmp), close_source=True) as server:
        assert server.wait(0) is False
    assert server.wait(0) is True
    server.stop()
    assert closed == [True]


def test_main_serves_until_sigterm_in_process(
    short_tmp: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script's main(), in this process (signals go to the main thread)."""
    address = f"unix://{short_tmp / 'main.sock'}"
    fetched: list[bytes] = []

    def client_then_sigterm() -> None:
        deadline = time.monotonic() + 20
        while not (short_tmp / "main.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        source = QuantumGrpcSource(GrpcSettings(grpc_server_address=address))
        try:
            fetched.append(source.get_random_bytes(32))
        finally:
            source.close()
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=client_then_sigterm)
    helper.start()
    rc = main(["--address", address, "--source", "system", "--log-format", "json"])
    helper.join(10)
    assert rc == 0
    assert len(fetched[0]) == 32
    assert not (short_tmp / "main.sock").exists()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    events = [entry["msg"].split()[0] for entry in lines if entry["logger"] == "qr_grpc.server"]
    assert events[:1] == ["event=serving"]
    assert "event=shutdown" in events
    assert events[-1] == "event=stopped"
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in lines)


def test_main_startup_errors(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--source", "no_such_source", "--address", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "event=startup_failed" in err
    assert "no_such_source" in err
    assert "system" in err  # the error lists what is installed
    assert main(["--address", "nohost", "--source", "system"]) == 2
    assert "'nohost'" in capsys.readouterr().err


def test_cli_process_graceful_sigterm_lets_the_running_call_finish(
    short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server(
        "--address",
        f"unix://{short_tmp / 'cli.sock'}",
        "--delay-ms",
        "800",
        "--grace-s",
        "5",
        "--device-id",
        "cli-test",
        env={"QR_SERVER_API_KEY": "cli-key"},
    )
    client = make_client(server.address, grpc_api_key="cli-key", grpc_timeout_ms=10_000)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(client.fetch(4096)))
    thread.start()
    time.sleep(0.3)  # in flight: the server is in its delay
    assert server.terminate() == 0
    thread.join(10)
    fetched = result[0]
    assert len(fetched.data) == 4096  # type: ignore[attr-defined]
    assert fetched.provenance.device_id == "cli-test"  # type: ignore[attr-defined]
    log = server.log()
    assert "event=shutdown signal=SIGTERM" in log
    assert "event=stopped" in log
    assert "api_key=required" in log
    assert "cli-key" not in log
    assert not (short_tmp / "cli.sock").exists()
