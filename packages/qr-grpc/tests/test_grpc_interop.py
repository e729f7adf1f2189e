"""Against peer servers and limits: non-echoing bidi, split fetches, start-up checks."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_helpers import (
    KeyedSource,
    ServerProcess,
    address_for,
    expected_bytes,
    start_handler_server,
)
from qr_entropy import EntropySettings, SourceCheckError
from qr_grpc import (
    DEFAULT_MAX_BYTES_PER_REQUEST,
    EntropyServer,
    GrpcEntropyUnavailableError,
    QuantumGrpcSource,
)
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc.server import SERVICE_NAME

MakeClient = Callable[..., QuantumGrpcSource]
StartServer = Callable[..., EntropyServer]
SpawnServer = Callable[..., ServerProcess]

MiB = 1024 * 1024


@pytest.fixture
def peer(short_tmp: Path) -> Iterator[Callable[..., str]]:
    """A real gRPC server whose StreamEntropy handler does not echo sequence_id."""
    servers: list[grpc.Server] = []

    def _start(ids: Iterator[int], slow_size: int = -1, slow_s: float = 0.0) -> str:
        lock = threading.Lock()

        def handler(
            requests: Iterator[EntropyRequest], context: object
        ) -> Iterator[EntropyResponse]:
            for request in requests:
                if request.bytes_needed == slow_size:
                    time.sleep(slow_s)
                with lock:
                    own_id = next(ids)
                yield EntropyResponse(data=expected_bytes(request.bytes_needed), sequence_id=own_id)

        address = f"unix://{short_tmp / f'peer{len(servers)}.sock'}"
        servers.append(
            start_handler_server(address, SERVICE_NAME, stream={"StreamEntropy": handler})
        )
        return address

    yield _start
    for server in servers:
        server.stop(0)


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param(lambda: itertools.count(1_000_000), id="own-counter"),
        pytest.param(lambda: itertools.repeat(1), id="constant-1"),
        pytest.param(lambda: itertools.repeat(0), id="zero"),
    ],
)
def test_bidi_against_a_server_that_does_not_echo_sequence_ids(
    ids: Callable[[], Iterator[int]], peer: Callable[..., str], make_client: MakeClient
) -> None:
    client = make_client(peer(ids()), grpc_mode="bidi_streaming", grpc_timeout_ms=30_000)
    started = time.monotonic()
    sizes = [[500 + 97 * t + 13 * i for i in range(20)] for t in range(4)]

    def work(thread_sizes: list[int]) -> bool:
        return all(client.get_random_bytes(n) == expected_bytes(n) for n in thread_sizes)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, sizes))
    # No fetch waited for a deadline: 80 fetches took nowhere near one 30 s deadline.
    assert time.monotonic() - started < 15
    assert client.circuit_breaker.consecutive_failures == 0


def test_bidi_non_echo_drops_the_late_answer_of_an_abandoned_request(
    peer: Callable[..., str], make_client: MakeClient
) -> None:
    address = peer(itertools.count(5000), slow_size=777, slow_s=1.5)
    client = make_client(address, grpc_mode="bidi_streaming", grpc_timeout_ms=1000)
    assert client.get_random_bytes(100) == expected_bytes(100)
    with pytest.raises(GrpcEntropyUnavailableError, match="1000 ms deadline"):
        client.get_random_bytes(777)
    # The 777-byte answer arrives late; it must not be handed to these fetches.
    for n in (200, 300, 400):
        assert client.get_random_bytes(n) == expected_bytes(n)


@pytest.mark.parametrize("mode", ["unary", "server_streaming", "bidi_streaming"])
def test_a_fetch_above_the_servers_limit_is_split_in_order(
    mode: str, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    # The reference server at its default limit, the client at its default: they agree.
    server = start_server(KeyedSource(), address_for("unix", short_tmp))
    client = make_client(server.address, grpc_mode=mode)
    rows, n = 9, 1_200_000  # 10.3 MiB: split at row boundaries, 3 whole rows per request
    block = client.fetch_block(rows, n)
    per = DEFAULT_MAX_BYTES_PER_REQUEST // n
    assert per == 3
    expected = b"".join(expected_bytes(per * n) for _ in range(rows // per))
    assert block.data.shape == (rows, n)
    assert block.data.tobytes() == expected
    # Each row names the request that served it (three requests, three rows each).
    ids = block.provenance.row_sequence_ids
    assert len(ids) == rows
    assert len(set(ids)) == 3
    assert ids == tuple(sorted(ids))
    assert [block.provenance.row_source_ids(i)[0] for i in range(rows)] == list(ids)
    assert all(t > 0 for t in block.provenance.row_generation_timestamps_ns)


def test_large_fetch_against_a_real_server_process(
    short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server("--address", f"unix://{short_tmp / 'big.sock'}")
    client = make_client(server.address, grpc_mode="bidi_streaming")
    client.configure(EntropySettings(max_request_bytes=64 * MiB))
    block = client.fetch_block(20, MiB)  # 20 MiB, five times the server's limit
    assert block.data.shape == (20, MiB)


def test_a_client_limit_above_the_servers_is_refused_with_a_hint(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(KeyedSource(), address_for("unix", short_tmp), max_bytes_per_request=1000)
    client = make_client(server.address, grpc_max_bytes_per_request=5000)
    with pytest.raises(GrpcEntropyUnavailableError, match="lower it to the server's limit"):
        client.get_random_bytes(3000)
    right = make_client(server.address, grpc_max_bytes_per_request=1000)
    assert right.get_random_bytes(3000) == expected_bytes(1000) * 3


@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_check_passes_against_a_working_server(
    mode: str, short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server("--address", f"unix://{short_tmp / 'ok.sock'}")
    result = make_client(server.address, grpc_mode=mode).check()
    assert result.ok, result
    assert result.problem == ""
    assert str(server.address) in result.detail
    result.raise_for_failure()  # no-op


@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_check_reports_a_wrong_api_key_at_start(
    mode: str, short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server(
        "--address", f"unix://{short_tmp / 'key.sock'}", env={"QR_SERVER_API_KEY": "right"}
    )
    client = make_client(server.address, grpc_mode=mode, grpc_api_key="wrong")
    result = client.check()
    assert not result.ok
    assert result.problem == "unauthenticated"
    assert server.address in result.detail
    assert "QR_GRPC_API_KEY" in result.detail
    assert "wrong" not in result.detail.replace("wrong API key", "")  # never the key
    with pytest.raises(SourceCheckError, match="unauthenticated") as caught:
        result.raise_for_failure()
    assert caught.value.problem == "unauthenticated"
    assert make_client(server.address, grpc_mode=mode, grpc_api_key="right").check().ok


def test_check_reports_an_unreachable_server_at_once(
    short_tmp: Path, make_client: MakeClient
) -> None:
    address = f"unix://{short_tmp / 'nobody.sock'}"
    started = time.monotonic()
    result = make_client(address, grpc_timeout_ms=30_000).check()
    assert time.monotonic() - started < 5  # refused, not waited for
    assert not result.ok
    assert result.problem == "unreachable"
    assert address in result.detail
    assert "QR_GRPC_SERVER_ADDRESS" in result.detail


def test_check_reports_a_stopped_server_as_timeout(
    short_tmp: Path, spawn_server: SpawnServer, make_client: MakeClient
) -> None:
    server = spawn_server("--address", f"unix://{short_tmp / 'stop.sock'}")
    client = make_client(server.address)
    assert client.check().ok
    server.proc.send_signal(signal.SIGSTOP)
    try:
        result = client.check(timeout_s=0.5)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert (result.ok, result.problem) == (False, "timeout")
    assert "500 ms" in result.detail


def test_check_of_a_closed_source(make_client: MakeClient) -> None:
    client = make_client("127.0.0.1:9")
    client.close()
    assert client.check().problem == "closed"


def test_public_stub_modules_import_by_their_documented_path() -> None:
    code = (
        "import qr_grpc.entropy_service_pb2 as pb2, qr_grpc.entropy_service_pb2_grpc as g\n"
        "from qr_grpc.entropy_service_pb2 import EntropyRequest\n"
        "assert pb2.EntropyRequest is EntropyRequest\n"
        "assert hasattr(g, 'add_EntropyServiceServicer_to_server')\n"
        "assert pb2.DESCRIPTOR.services_by_name['EntropyService']\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
