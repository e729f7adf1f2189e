"""Servers that misbehave in specific ways, and the event-loop helper."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import (
    KeyedSource,
    address_for,
    expected_bytes,
    fetch_in_background,
    start_handler_server,
)
from qr_entropy import EntropySettings
from qr_grpc import EntropyServer, GrpcEntropyUnavailableError, GrpcSettings, QuantumGrpcSource
from qr_grpc._loop import LoopStoppedError, LoopThread
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc.server import SERVICE_NAME

MakeClient = Callable[..., QuantumGrpcSource]
StartServer = Callable[..., EntropyServer]
StreamHandler = Callable[[Iterator[EntropyRequest], object], Iterator[EntropyResponse]]


@pytest.fixture
def stream_server(short_tmp: Path) -> Iterator[Callable[[StreamHandler], str]]:
    """A real gRPC server whose StreamEntropy handler the test supplies."""
    servers: list[grpc.Server] = []

    def _start(handler: StreamHandler) -> str:
        address = f"unix://{short_tmp / f'edge{len(servers)}.sock'}"
        servers.append(
            start_handler_server(address, SERVICE_NAME, stream={"StreamEntropy": handler})
        )
        return address

    yield _start
    for server in servers:
        server.stop(0)


def test_server_streaming_without_a_response(
    stream_server: Callable[[StreamHandler], str], make_client: MakeClient
) -> None:
    def silent(requests: Iterator[EntropyRequest], context: object) -> Iterator[EntropyResponse]:
        yield from ()

    client = make_client(stream_server(silent), grpc_mode="server_streaming")
    with pytest.raises(GrpcEntropyUnavailableError, match="ended without a response"):
        client.get_random_bytes(10)


def test_server_streaming_with_two_responses(
    stream_server: Callable[[StreamHandler], str], make_client: MakeClient
) -> None:
    def chatty(requests: Iterator[EntropyRequest], context: object) -> Iterator[EntropyResponse]:
        for request in requests:
            yield EntropyResponse(data=expected_bytes(request.bytes_needed))
            yield EntropyResponse(data=expected_bytes(request.bytes_needed))

    client = make_client(stream_server(chatty), grpc_mode="server_streaming")
    with pytest.raises(GrpcEntropyUnavailableError, match="more than one response"):
        client.get_random_bytes(10)


def test_bidi_reopens_a_stream_the_server_ended(
    stream_server: Callable[[StreamHandler], str], make_client: MakeClient
) -> None:
    def one_per_stream(
        requests: Iterator[EntropyRequest], context: object
    ) -> Iterator[EntropyResponse]:
        request = next(requests)
        yield EntropyResponse(
            data=expected_bytes(request.bytes_needed), sequence_id=request.sequence_id
        )
        # ...and the stream ends: the client must open a new one for the next fetch.

    client = make_client(stream_server(one_per_stream), grpc_mode="bidi_streaming")
    for n in (100, 200, 300, 400):
        assert client.get_random_bytes(n) == expected_bytes(n)


def test_source_error_on_the_server_is_internal_with_its_message(
    short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    # The server allows 4 MiB per request, but its source was configured for 1 kB.
    source = KeyedSource()
    source.configure(EntropySettings(max_request_bytes=1000))
    server = start_server(source, address_for("unix", short_tmp))
    client = make_client(server.address)
    with pytest.raises(GrpcEntropyUnavailableError, match=r"INTERNAL entropy source error.*1000"):
        client.get_random_bytes(2000)


def test_settings_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_GRPC_SERVER_ADDRESS", "[::1]:6000")
    source = QuantumGrpcSource()
    try:
        assert source.address.target == "[::1]:6000"
        assert isinstance(source.settings, GrpcSettings)
    finally:
        source.close()


def test_loop_thread_runs_raises_times_out_and_stops_for_good() -> None:
    loop = LoopThread("qr-grpc-test-loop")
    assert not loop.started

    async def value() -> int:
        return 7

    async def boom() -> None:
        raise ValueError("from the loop")

    async def forever() -> None:
        await asyncio.sleep(3600)

    assert loop.run(value()) == 7
    assert loop.started
    with pytest.raises(ValueError, match="from the loop"):
        loop.run(boom())
    with pytest.raises(concurrent.futures.TimeoutError):
        loop.run(forever(), timeout_s=0.05)
    loop.stop()
    assert not loop.started
    with pytest.raises(LoopStoppedError):  # final: a racing fetch must not restart it
        loop.run(value())
    loop.stop()


def test_loop_thread_stop_before_start_closes_the_cleanup() -> None:
    async def cleanup() -> None:
        raise AssertionError("never runs")

    loop = LoopThread("qr-grpc-test-loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would be an error
        loop.stop(cleanup())
        gc.collect()
    assert not loop.started


@pytest.mark.parametrize("mode", ["unary", "bidi_streaming"])
def test_close_during_a_fetch_fails_that_fetch_cleanly(
    mode: str, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    import threading
    import time

    server = start_server(KeyedSource(), address_for("unix", short_tmp), delay_ms=400)
    client = make_client(server.address, grpc_mode=mode, grpc_timeout_ms=10_000)
    assert client.get_random_bytes(8) == expected_bytes(8)
    pending = fetch_in_background(client, 64)
    time.sleep(0.1)
    client.close()
    error = pending.exception(timeout=10)  # raises TimeoutError if the fetch hangs
    assert isinstance(error, GrpcEntropyUnavailableError), repr(error)
    assert not any(t.name == "qr-grpc-client" for t in threading.enumerate())
