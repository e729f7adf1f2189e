"""QuantumGrpcSource against real servers on loopback TCP and Unix sockets."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_helpers import (
    ADDRESS_KINDS,
    MODES,
    KeyedSource,
    address_for,
    expected_bytes,
    ipv6_loopback_available,
    start_handler_server,
)
from qr_entropy import (
    EntropyConfigError,
    EntropySource,
    EntropyUnavailableError,
    HealthStatus,
)
from qr_grpc import (
    CircuitState,
    EntropyServer,
    GrpcEntropyUnavailableError,
    QuantumGrpcSource,
)
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc.server import SERVICE_NAME

StartServer = Callable[..., EntropyServer]
MakeClient = Callable[..., QuantumGrpcSource]


@pytest.mark.parametrize("kind", ADDRESS_KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_over_every_address_kind(
    kind: str,
    mode: str,
    short_tmp: Path,
    start_server: StartServer,
    make_client: MakeClient,
) -> None:
    server = start_server(KeyedSource(), address_for(kind, short_tmp), device_id="qrng-7")
    client = make_client(server.address, grpc_mode=mode)

    block = client.fetch_block(4, 2048)  # one request of 8,192 bytes
    assert block.data.shape == (4, 2048)
    assert block.data.dtype == np.uint8
    assert block.data.flags.c_contiguous
    assert block.data.tobytes() == expected_bytes(4 * 2048)
    prov = block.provenance
    assert prov.source == "quantum_grpc"
    assert prov.device_id == "qrng-7"
    assert not prov.is_fallback
    assert prov.health is HealthStatus.OK  # the SP 800-90B tests ran on these bytes
    assert prov.fetch_latency_ns > 0

    fetched = client.fetch(1000)
    assert fetched.data == expected_bytes(1000)
    assert client.get_random_bytes(333) == expected_bytes(333)
    assert client.fetch(0).data == b""  # nothing to ask the server for
    assert client.circuit_breaker.sample_count == 3
    status = client.health_check()
    assert status["server_status"] == "SERVING"
    assert status["mode"] == mode
    assert status["address"] == str(server.address)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("mode", MODES)
def test_ipv6_loopback(mode: str, start_server: StartServer, make_client: MakeClient) -> None:
    server = start_server(KeyedSource(), "[::1]:0")
    assert server.address.target.startswith("[::1]:")
    client = make_client(server.address, grpc_mode=mode)
    assert client.get_random_bytes(100) == expected_bytes(100)


def test_fetch_block_is_one_request_for_all_rows(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    seen: list[int] = []

    class Recording(KeyedSource):
        def get_random_bytes(self, n: int) -> bytes:
            seen.append(n)
            return super().get_random_bytes(n)

    server = start_server(Recording(), address_for("unix", short_tmp))
    client = make_client(server.address, grpc_mode="bidi_streaming")
    block = client.fetch_block(64, 20_480)
    assert seen == [64 * 20_480]
    assert block.data.tobytes() == expected_bytes(64 * 20_480)
    # A view of the response payload, not a copy.
    assert not block.data.flags.owndata


@pytest.mark.parametrize("kind", ADDRESS_KINDS)
def test_concurrent_bidi_fetches_get_their_own_bytes(
    kind: str, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(KeyedSource(), address_for(kind, short_tmp), max_workers=4)
    # A generous deadline: this test is about matching, and eight threads queue on four
    # server workers.
    client = make_client(server.address, grpc_mode="bidi_streaming", grpc_timeout_ms=30_000)
    # Each thread asks for its own sizes, so a response delivered to the wrong fetch
    # would show as wrong bytes (the length check would catch it first).
    sizes = [[1000 + 97 * t + 13 * i for i in range(25)] for t in range(8)]

    def work(thread_sizes: list[int]) -> list[bool]:
        return [client.get_random_bytes(n) == expected_bytes(n) for n in thread_sizes]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, sizes))
    assert all(all(r) for r in results)
    assert client.circuit_breaker.consecutive_failures == 0


def test_wrong_payload_length_is_a_source_failure(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    class ShortReads(KeyedSource):
        """Stands in for a broken device behind a server that does not check lengths."""

        def fetch(self, n: int):  # type: ignore[no-untyped-def]
            result = super().fetch(n)
            return type(result)(data=result.data[:-1], provenance=result.provenance)

    server = start_server(ShortReads(), address_for("unix", short_tmp))
    for mode in MODES:
        client = make_client(server.address, grpc_mode=mode)
        with pytest.raises(GrpcEntropyUnavailableError, match=r"returned 99 bytes .* of 100"):
            client.get_random_bytes(100)
        # Not a transport failure: no retries, one failure counted.
        assert client.circuit_breaker.consecutive_failures == 1


def test_oversized_request_is_refused_by_the_server_with_a_clear_status(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(KeyedSource(), address_for("tcp", short_tmp), max_bytes_per_request=1000)
    for mode in MODES:
        client = make_client(server.address, grpc_mode=mode)
        with pytest.raises(
            GrpcEntropyUnavailableError,
            match=r"INVALID_ARGUMENT bytes_needed=1001 is outside the allowed range 1\.\.1000",
        ):
            client.get_random_bytes(1001)
        assert client.get_random_bytes(1000) == expected_bytes(1000)


@pytest.mark.parametrize("n", [0, -5, 1001])
def test_server_rejects_bad_bytes_needed_without_crashing(
    n: int, short_tmp: Path, start_server: StartServer
) -> None:
    server = start_server(KeyedSource(), address_for("unix", short_tmp), max_bytes_per_request=1000)
    with grpc.insecure_channel(server.address.target) as channel:
        get = channel.unary_unary(
            f"/{SERVICE_NAME}/GetEntropy",
            request_serializer=EntropyRequest.SerializeToString,
            response_deserializer=EntropyResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            get(EntropyRequest(bytes_needed=n), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"bytes_needed={n}" in info.value.details()
        assert len(get(EntropyRequest(bytes_needed=10), timeout=5).data) == 10


def test_client_side_size_guard(make_client: MakeClient) -> None:
    client = make_client("127.0.0.1:9")
    client.max_request_bytes = 100
    with pytest.raises(EntropyConfigError, match="max_request_bytes=100"):
        client.fetch_block(2, 51)
    with pytest.raises(EntropyConfigError, match="negative"):
        client.get_random_bytes(-1)


@pytest.mark.parametrize("mode", MODES)
def test_api_key_required_and_rejected_when_wrong(
    mode: str,
    short_tmp: Path,
    start_server: StartServer,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server(
        KeyedSource(), address_for("unix", short_tmp), api_key="k-123", api_key_header="x-qrng-key"
    )
    missing = make_client(server.address, grpc_mode=mode)
    with pytest.raises(GrpcEntropyUnavailableError, match="UNAUTHENTICATED"):
        missing.get_random_bytes(64)
    wrong = make_client(
        server.address, grpc_mode=mode, grpc_api_key="guess", grpc_api_key_header="x-qrng-key"
    )
    with pytest.raises(GrpcEntropyUnavailableError, match="UNAUTHENTICATED"):
        wrong.get_random_bytes(64)
    # A rejection is the server's answer, not a broken connection: no retries.
    assert wrong.circuit_breaker.consecutive_failures == 1
    right = make_client(
        server.address, grpc_mode=mode, grpc_api_key="k-123", grpc_api_key_header="x-qrng-key"
    )
    assert right.get_random_bytes(64) == expected_bytes(64)
    status = right.health_check()
    assert status["authenticated"] is True
    assert "k-123" not in repr(status)
    assert "k-123" not in caplog.text
    assert "guess" not in caplog.text
    # A refusal is the server's answer: the channel is kept.
    assert "rebuilding grpc channel" not in caplog.text


def test_server_side_source_failure_is_unavailable(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    class Broken(EntropySource):
        @property
        def name(self) -> str:
            return "broken"

        def get_random_bytes(self, n: int) -> bytes:
            raise EntropyUnavailableError("device unplugged")

    server = start_server(Broken(), address_for("unix", short_tmp))
    client = make_client(server.address, grpc_retry_count=0)
    with pytest.raises(GrpcEntropyUnavailableError, match="device unplugged"):
        client.get_random_bytes(10)


def test_unreachable_server(short_tmp: Path, make_client: MakeClient) -> None:
    for mode in MODES:
        client = make_client(
            f"unix://{short_tmp / 'nobody.sock'}", grpc_mode=mode, grpc_retry_count=1
        )
        with pytest.raises(GrpcEntropyUnavailableError, match="after 2 attempt"):
            client.get_random_bytes(10)
        assert client.health_check()["server_status"] == "unreachable: UNAVAILABLE"


def test_closed_source_refuses(make_client: MakeClient, short_tmp: Path) -> None:
    client = make_client(f"unix://{short_tmp / 'x.sock'}")
    client.close()
    client.close()
    with pytest.raises(GrpcEntropyUnavailableError, match="closed"):
        client.get_random_bytes(1)
    assert client.health_check()["server_status"] == "closed"


def test_close_stops_the_loop_thread(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(KeyedSource(), address_for("unix", short_tmp))
    client = make_client(server.address, grpc_mode="bidi_streaming")
    client.get_random_bytes(8)
    assert any(t.name == "qr-grpc-client" for t in threading.enumerate())
    client.close()
    assert not any(t.name == "qr-grpc-client" for t in threading.enumerate())


def test_custom_method_paths_reach_a_server_with_the_same_field_layout(
    short_tmp: Path, make_client: MakeClient
) -> None:
    """A third-party service (other names, same field numbers) works via the path settings."""

    def get_random(request: EntropyRequest, context: object) -> EntropyResponse:
        return EntropyResponse(data=expected_bytes(request.bytes_needed))

    def stream(requests, context):  # type: ignore[no-untyped-def]
        for request in requests:  # this server does not echo sequence ids
            yield EntropyResponse(data=expected_bytes(request.bytes_needed))

    address = f"unix://{short_tmp / 'third.sock'}"
    server = start_handler_server(
        address,
        "qrng.QuantumRNG",
        unary={"GetRandomBytes": get_random},
        stream={"StreamRandomBytes": stream},
    )
    try:
        for mode in MODES:
            client = make_client(
                address,
                grpc_mode=mode,
                grpc_method_path="/qrng.QuantumRNG/GetRandomBytes",
                grpc_stream_method_path="/qrng.QuantumRNG/StreamRandomBytes",
            )
            for n in (10, 20, 30):  # ids not echoed: bidi answers in order
                assert client.get_random_bytes(n) == expected_bytes(n)
            assert client.health_check()["server_status"] == "unimplemented"
    finally:
        server.stop(0)


def test_breaker_state_is_visible(make_client: MakeClient) -> None:
    client = make_client("127.0.0.1:9")
    assert client.circuit_breaker.state is CircuitState.CLOSED
    assert client.is_available
