"""Shared fixtures of the qr-grpc tests: real servers on loopback TCP and Unix sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_helpers import ServerProcess, wait_for_serving
from qr_entropy import EntropySettings, EntropySource, EntropySourceRegistry
from qr_grpc import EntropyServer, GrpcSettings, QuantumGrpcSource, serve


@pytest.fixture(autouse=True)
def _isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No QR_* variable or .env file of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp: Unix socket paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="qrg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def system_source() -> EntropySource:
    return EntropySourceRegistry.build("system", EntropySettings())


@pytest.fixture
def start_server() -> Iterator[Callable[..., EntropyServer]]:
    """Start in-process servers; every one is stopped at teardown."""
    servers: list[EntropyServer] = []

    def _start(source: EntropySource, address: str, **kwargs: object) -> EntropyServer:
        server = serve(source, address, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop(0)


@pytest.fixture
def make_client() -> Iterator[Callable[..., QuantumGrpcSource]]:
    """Build clients; every one is closed at teardown."""
    clients: list[QuantumGrpcSource] = []

    def _make(address: object, **settings: object) -> QuantumGrpcSource:
        # A 10 s deadline unless a test sets its own: tests that are not about timeouts
        # must not fail on a machine loaded by other jobs. The tests of the deadline
        # set it, and the test of the defaults builds its client without this helper.
        settings.setdefault("grpc_timeout_ms", 10_000.0)
        client = QuantumGrpcSource(
            GrpcSettings(grpc_server_address=str(address), **settings)  # type: ignore[arg-type]
        )
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.close()


@pytest.fixture
def spawn_process(short_tmp: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server command as a real child process; killed at teardown.

    The command must log ``event=serving address=<bound address>`` when it is ready.
    """
    started: list[ServerProcess] = []

    def _spawn(argv: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        log_path = short_tmp / f"server-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        address = wait_for_serving(proc, log_path)
        server = ServerProcess(proc, address, log_path)
        started.append(server)
        return server

    yield _spawn
    for server in started:
        server.kill()


@pytest.fixture
def spawn_server(
    spawn_process: Callable[..., ServerProcess],
) -> Callable[..., ServerProcess]:
    """Start ``qr-entropy-server`` (``python -m qr_grpc.server``) as a child process."""

    def _spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return spawn_process([sys.executable, "-m", "qr_grpc.server", *args], env=env)

    return _spawn
