"""The plugin's metrics: counting from records, scrape-time state, the real HTTP endpoint."""

from __future__ import annotations

import logging
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _steps import step
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from qr_entropy import (
    EntropySourceRegistry,
    FallbackEntropySource,
    HealthTestFailure,
)
from qr_grpc import QuantumGrpcSource
from qr_grpc._settings import GrpcSettings
from qr_vllm import QRSamplerConfig, SamplingLogger
from qr_vllm._drift import DriftMonitor
from qr_vllm._metrics import Histogram, SamplerMetrics
from qr_vllm._metrics_export import (
    collector,
    register,
    registry,
    start_endpoint,
    start_metrics,
    unregister,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_text() -> str:
    return generate_latest(registry()).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def mock_source() -> FallbackEntropySource:
    primary = EntropySourceRegistry.build("mock_uniform", QRSamplerConfig(mock_seed=1))
    return FallbackEntropySource(primary, EntropySourceRegistry.get("system")())


def test_counters_follow_the_records(tmp_path: Path, mock_source: FallbackEntropySource) -> None:
    log = SamplingLogger("none", tmp_path / "r.jsonl")
    assert log.sink is not None
    metrics = SamplerMetrics(
        mock_source, DriftMonitor(100, 0.0), failed_requests=lambda: 3, records=log.sink.stats
    )
    log.metrics = metrics
    register(metrics)
    try:
        log.log_step(step(3))
        log.log_step(step(2, fallback=True))
        log.log_step(step(4, status="failed"))
        assert log.sink.flush()
        text = scrape_text()
    finally:
        unregister(metrics)
        log.close()
    src = "mock_uniform"  # the configured source, not the fallback that stood in
    assert value(text, "qr_sampler_tokens_total", source=src) == 5
    assert value(text, "qr_sampler_fallback_tokens_total", source=src) == 2
    assert value(text, "qr_sampler_failed_tokens_total", source=src) == 4
    assert value(text, "qr_sampler_failed_requests_total", source=src) == 3
    assert value(text, "qr_sampler_entropy_bytes_total", source=src) == 5 * 16
    assert value(text, "qr_sampler_entropy_fetch_seconds_count", source=src) == 2
    assert value(text, "qr_sampler_records_written_total") == 9
    assert value(text, "qr_sampler_records_dropped_total") == 0
    assert value(text, "qr_sampler_records_queued_steps") == 0
    # Only the 3 non-fallback ok tokens feed the drift monitor.
    assert value(text, "qr_sampler_drift_tokens", source=src, window="lifetime") == 3
    assert value(text, "qr_sampler_drift_z", source=src, window="sliding") == 0.0
    assert (
        value(text, "qr_sampler_health_test_failures_total", source=src, test="repetition_count")
        == 0
    )
    # No breaker on a mock source: no breaker series.
    assert not [k for k in samples(text) if k[0].startswith("qr_sampler_breaker")]


def test_health_failures_by_test_are_read_from_the_source(
    mock_source: FallbackEntropySource,
) -> None:
    metrics = SamplerMetrics(mock_source, DriftMonitor(10, 0.0))
    monitor = mock_source.primary.health_monitor
    with pytest.raises(HealthTestFailure):
        monitor.test_block(np.zeros(4096, dtype=np.uint8))  # a stuck device
    register(metrics)
    try:
        text = scrape_text()
    finally:
        unregister(metrics)
    labels = {"source": "mock_uniform"}
    rct = value(text, "qr_sampler_health_test_failures_total", **labels, test="repetition_count")
    apt = value(text, "qr_sampler_health_test_failures_total", **labels, test="adaptive_proportion")
    assert rct + apt == 1


def test_breaker_state_and_transitions_of_a_grpc_source() -> None:
    clock = [0.0]
    source = QuantumGrpcSource(
        GrpcSettings(cb_max_consecutive_failures=1, cb_recovery_window_s=5.0),
        clock=lambda: clock[0],
    )
    metrics = SamplerMetrics(
        FallbackEntropySource(source, EntropySourceRegistry.get("system")()), DriftMonitor(10, 0.0)
    )
    breaker = source.circuit_breaker
    register(metrics)
    try:
        assert breaker.allow_request()
        breaker.record_failure()  # opens
        text = scrape_text()
        assert value(text, "qr_sampler_breaker_state", source="quantum_grpc", state="open") == 1
        assert value(text, "qr_sampler_breaker_state", source="quantum_grpc", state="closed") == 0
        clock[0] = 6.0
        assert breaker.allow_request()  # half-open probe
        breaker.record_success(0.001)  # closes
        text = scrape_text()
    finally:
        unregister(metrics)
        source.close()
    assert value(text, "qr_sampler_breaker_state", source="quantum_grpc", state="closed") == 1
    for state in ("open", "half_open", "closed"):
        assert (
            value(text, "qr_sampler_breaker_transitions_total", source="quantum_grpc", state=state)
            == 1
        )


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        hist.observe(v)
    buckets, total, count = hist.cumulative()
    assert buckets == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert total == pytest.approx(2.65)
    assert count == 4
    with pytest.raises(ValueError, match="increase"):
        Histogram((1.0, 0.5))


def test_the_endpoint_serves_metrics_and_a_busy_port_is_only_a_warning(
    mock_source: FallbackEntropySource, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = QRSamplerConfig(metrics_port=port)
    metrics = start_metrics(config, None, mock_source, lambda: 0, None)
    assert metrics is not None
    assert metrics in collector().live()
    try:
        metrics.observe_step(step(2))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        assert value(text, "qr_sampler_tokens_total", source="mock_uniform") == 2
        assert start_endpoint("127.0.0.1", port)  # the same endpoint again: already there
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = int(busy.getsockname()[1])
            with caplog.at_level(logging.WARNING, logger="qr_sampler"):
                assert not start_endpoint("127.0.0.1", taken)
        assert "not started" in caplog.text
    finally:
        unregister(metrics)
    assert metrics not in collector().live()


def test_metrics_are_off_by_default_and_follow_the_data_parallel_rank(
    mock_source: FallbackEntropySource,
) -> None:
    assert start_metrics(QRSamplerConfig(), None, mock_source, lambda: 0, None) is None
    base = free_port()
    vllm_config = type("C", (), {"parallel_config": type("P", (), {"data_parallel_rank": 1})()})()
    # The rank-1 replica listens one port above the configured one.
    metrics = start_metrics(
        QRSamplerConfig(metrics_port=base - 1), vllm_config, mock_source, lambda: 0, None
    )
    assert metrics is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{base}/metrics", timeout=30) as r:
            assert b"qr_sampler_tokens_total" in r.read()
    finally:
        unregister(metrics)


def test_bad_metric_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        QRSamplerConfig(metrics_port=70000)
    with pytest.raises(ValueError, match="metrics_drift_window"):
        QRSamplerConfig(metrics_drift_window=1)
