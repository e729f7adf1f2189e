"""qr-entropy-server's Prometheus metrics, scraped over HTTP from real servers."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_helpers import KeyedSource, ServerProcess, address_for
from qr_entropy import EntropySource, EntropyUnavailableError
from qr_grpc import EntropyServer, QuantumGrpcSource

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="the server's metrics need the qr-grpc[metrics] extra"
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from qr_grpc._server_metrics import ServerMetrics  # noqa: E402

MakeClient = Callable[..., QuantumGrpcSource]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class StuckDevice(EntropySource):
    """A physical source whose output got stuck: every health test must fail."""

    health_tested = True

    @property
    def name(self) -> str:
        return "stuck_device"

    def get_random_bytes(self, n: int) -> bytes:
        return bytes(n)


def test_requests_bytes_latency_and_streams_by_method(
    short_tmp: Path, start_server: Callable[..., EntropyServer], make_client: MakeClient
) -> None:
    source = KeyedSource()
    metrics = ServerMetrics(source)
    port = metrics.start_endpoint("127.0.0.1", 0)
    try:
        server = start_server(
            source, address_for("unix", short_tmp), metrics=metrics, max_bytes_per_request=1000
        )
        unary = make_client(server.address, grpc_mode="unary", grpc_retry_count=0)
        for _ in range(3):
            assert len(unary.get_random_bytes(100)) == 100
        with pytest.raises(EntropyUnavailableError):
            unary.get_random_bytes(5000)  # over the server's limit: INVALID_ARGUMENT
        bidi = make_client(server.address, grpc_mode="bidi_streaming")
        assert len(bidi.get_random_bytes(64)) == 64
        assert len(bidi.get_random_bytes(64)) == 64
        values = scrape(port)
        assert get(values, "qr_entropy_server_requests_total", method="GetEntropy", code="OK") == 3
        assert (
            get(
                values,
                "qr_entropy_server_requests_total",
                method="GetEntropy",
                code="INVALID_ARGUMENT",
            )
            == 1
        )
        assert (
            get(values, "qr_entropy_server_requests_total", method="StreamEntropy", code="OK") == 2
        )
        assert get(values, "qr_entropy_server_bytes_served_total", method="GetEntropy") == 300
        assert get(values, "qr_entropy_server_bytes_served_total", method="StreamEntropy") == 128
        assert get(values, "qr_entropy_server_request_seconds_count", method="GetEntropy") == 3
        assert get(values, "qr_entropy_server_request_seconds_count", method="StreamEntropy") == 2
        assert get(values, "qr_entropy_server_active_streams") == 1  # the bidi client's stream
        assert get(values, "qr_entropy_server_source_available", source="keyed_test") == 1
        bidi.close()
        assert wait_until(lambda: get(scrape(port), "qr_entropy_server_active_streams") == 0)
    finally:
        metrics.stop_endpoint()
        metrics.stop_endpoint()  # idempotent


def test_health_test_failures_of_the_served_source(
    short_tmp: Path, start_server: Callable[..., EntropyServer], make_client: MakeClient
) -> None:
    source = StuckDevice()
    metrics = ServerMetrics(source)
    port = metrics.start_endpoint("127.0.0.1", 0)
    try:
        server = start_server(source, address_for("unix", short_tmp), metrics=metrics)
        client = make_client(server.address, grpc_retry_count=0)
        with pytest.raises(EntropyUnavailableError):
            client.get_random_bytes(1024)
        values = scrape(port)
    finally:
        metrics.stop_endpoint()
    failures = sum(
        get(values, "qr_entropy_server_health_test_failures_total", source="stuck_device", test=t)
        for t in ("repetition_count", "adaptive_proportion")
    )
    assert failures == 1
    assert (
        get(values, "qr_entropy_server_requests_total", method="GetEntropy", code="UNAVAILABLE")
        == 1
    )


def test_the_console_script_serves_metrics_and_refuses_a_busy_port(
    spawn_server: Callable[..., ServerProcess],
    make_client: MakeClient,
    short_tmp: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = spawn_server(
        "--address", f"unix://{short_tmp / 'm.sock'}", "--metrics-port", str(port)
    )
    client = make_client(server.address)
    assert len(client.get_random_bytes(256)) == 256
    values = scrape(port)
    assert get(values, "qr_entropy_server_bytes_served_total", method="GetEntropy") == 256
    assert get(values, "qr_entropy_server_source_available", source="system") == 1
    assert "event=metrics" in server.log()
    # A second server on the same metrics port exits with a clear error instead.
    import subprocess
    import sys

    busy = subprocess.run(
        [
            sys.executable,
            "-m",
            "qr_grpc.server",
            "--address",
            f"unix://{short_tmp / 'n.sock'}",
            "--metrics-port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert busy.returncode == 2
    assert "event=startup_failed" in busy.stderr
    assert "metrics" in busy.stderr
