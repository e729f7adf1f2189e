"""The plugin's metrics: counting by named source, scrape-time state, the HTTP endpoint."""

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
from qr_vllm._records import Column


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
        mock_source,
        DriftMonitor(100, 0.0),
        failed_requests=lambda: {"default": 3},
        records=log.sink.stats,
    )
    log.metrics = metrics
    register(metrics)
    try:
        log.log_step(step(3))
        log.log_step(step(2, fallback=True))
        log.log_step(step(4, status="failed"))
        metrics.observe_step_time(0.002)
        assert log.sink.flush()
        text = scrape_text()
    finally:
        unregister(metrics)
        log.close()
    # The configured source, not the fallback that stood in; the engine's own: "default".
    src = {"source": "mock_uniform", "qr_source": "default"}
    assert value(text, "qr_sampler_tokens_total", **src) == 5
    assert value(text, "qr_sampler_fallback_tokens_total", **src) == 2
    assert value(text, "qr_sampler_failed_tokens_total", **src) == 4
    assert value(text, "qr_sampler_failed_requests_total", **src) == 3
    assert value(text, "qr_sampler_entropy_bytes_total", **src) == 5 * 16
    assert value(text, "qr_sampler_entropy_fetch_seconds_count", **src) == 2
    # The step time is one per step, whatever sources it served: no source labels.
    assert value(text, "qr_sampler_step_seconds_count") == 1
    assert value(text, "qr_sampler_records_written_total") == 9
    assert value(text, "qr_sampler_records_dropped_total") == 0
    assert value(text, "qr_sampler_records_queued_steps") == 0
    # Only the 3 non-fallback ok tokens feed the drift monitor.
    assert value(text, "qr_sampler_drift_tokens", **src, window="lifetime") == 3
    assert value(text, "qr_sampler_drift_z", **src, window="sliding") == 0.0
    assert value(text, "qr_sampler_health_test_failures_total", **src, test="repetition_count") == 0
    # No breaker on a mock source: no breaker series.
    assert not [k for k in samples(text) if k[0].startswith("qr_sampler_breaker")]


def test_two_named_sources_count_and_drift_apart(mock_source: FallbackEntropySource) -> None:
    control = EntropySourceRegistry.get("system")()
    failed = {"default": 1, "control": 2}
    metrics = SamplerMetrics(
        mock_source, DriftMonitor(100, 0.0), failed_requests=lambda: failed,
        named={"control": control},
    )  # fmt: skip
    default_step, control_step = step(3), step(2, qr_source="control")
    default_step.values[:, Column.Z_SCORE] = 1.0  # type: ignore[index]
    control_step.values[:, Column.Z_SCORE] = -2.0  # type: ignore[index]
    metrics.observe_step(default_step)
    metrics.observe_step(control_step)
    metrics.observe_step(step(4, qr_source="control", fallback=True))
    # A step failed as a whole: one group holding both sources' rows.
    metrics.observe_step(step(3, status="failed", qr_source=["default", "control", "control"]))
    metrics.observe_step_time(0.001)
    register(metrics)
    try:
        text = scrape_text()
    finally:
        unregister(metrics)
    default = {"source": "mock_uniform", "qr_source": "default"}
    ctl = {"source": "system", "qr_source": "control"}
    expected = {
        "qr_sampler_tokens_total": (3, 6),
        "qr_sampler_fallback_tokens_total": (0, 4),
        "qr_sampler_failed_tokens_total": (1, 2),
        "qr_sampler_failed_requests_total": (1, 2),
        "qr_sampler_entropy_bytes_total": (3 * 16, 6 * 16),
        "qr_sampler_entropy_fetch_seconds_count": (1, 2),
    }
    for name, (want_default, want_control) in expected.items():
        assert value(text, name, **default) == want_default, name
        assert value(text, name, **ctl) == want_control, name
    # Each arm has its own Stouffer Z: sum(z) / sqrt(n) of its own non-fallback tokens.
    assert value(text, "qr_sampler_drift_tokens", **default, window="lifetime") == 3
    assert value(text, "qr_sampler_drift_tokens", **ctl, window="lifetime") == 2
    assert value(text, "qr_sampler_drift_z", **default, window="lifetime") == pytest.approx(
        3 / 3**0.5
    )
    assert value(text, "qr_sampler_drift_z", **ctl, window="lifetime") == pytest.approx(-4 / 2**0.5)
    assert value(text, "qr_sampler_step_seconds_count") == 1
    # A name outside the configuration (the engine never sees one) stays apart, bounded.
    metrics.observe_step(step(1, qr_source="stray"))
    register(metrics)
    try:
        text = scrape_text()
    finally:
        unregister(metrics)
    assert value(text, "qr_sampler_tokens_total", source="unknown", qr_source="stray") == 1
    assert value(text, "qr_sampler_tokens_total", **default) == 3


def test_health_failures_by_test_are_read_from_each_named_source(
    mock_source: FallbackEntropySource,
) -> None:
    other = EntropySourceRegistry.build("mock_uniform", QRSamplerConfig(mock_seed=2))
    metrics = SamplerMetrics(mock_source, DriftMonitor(10, 0.0), named={"qrng": other})
    monitor = other.health_monitor  # type: ignore[attr-defined]
    with pytest.raises(HealthTestFailure):
        monitor.test_block(np.zeros(4096, dtype=np.uint8))  # a stuck device
    register(metrics)
    try:
        text = scrape_text()
    finally:
        unregister(metrics)

    def failures(qr_source: str) -> float:
        labels = {"source": "mock_uniform", "qr_source": qr_source}
        metric = "qr_sampler_health_test_failures_total"
        rct = value(text, metric, **labels, test="repetition_count")
        return rct + value(text, metric, **labels, test="adaptive_proportion")

    assert failures("qrng") == 1  # the named source whose own monitor failed
    assert failures("default") == 0


def test_breaker_state_and_transitions_of_each_named_grpc_source() -> None:
    clock = [0.0]
    settings = GrpcSettings(cb_max_consecutive_failures=1, cb_recovery_window_s=5.0)
    source = QuantumGrpcSource(settings, clock=lambda: clock[0])
    steady = QuantumGrpcSource(settings, clock=lambda: clock[0])
    system = EntropySourceRegistry.get("system")()
    metrics = SamplerMetrics(
        FallbackEntropySource(source, system), DriftMonitor(10, 0.0), named={"qrng2": steady}
    )
    breaker = source.circuit_breaker

    def state(text: str, qr_source: str, s: str) -> float:
        labels = {"source": "quantum_grpc", "qr_source": qr_source, "state": s}
        return value(text, "qr_sampler_breaker_state", **labels)

    def entries(text: str, qr_source: str, s: str) -> float:
        labels = {"source": "quantum_grpc", "qr_source": qr_source, "state": s}
        return value(text, "qr_sampler_breaker_transitions_total", **labels)

    register(metrics)
    try:
        assert breaker.allow_request()
        breaker.record_failure()  # opens
        text = scrape_text()
        assert state(text, "default", "open") == 1
        assert state(text, "default", "closed") == 0
        # The other named source has its own breaker, still closed.
        assert state(text, "qrng2", "closed") == 1
        assert entries(text, "qrng2", "open") == 0
        clock[0] = 6.0
        assert breaker.allow_request()  # half-open probe
        breaker.record_success(0.001)  # closes
        text = scrape_text()
    finally:
        unregister(metrics)
        source.close()
        steady.close()
    assert state(text, "default", "closed") == 1
    for s in ("open", "half_open", "closed"):
        assert entries(text, "default", s) == 1
        assert entries(text, "qrng2", s) == 0


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
    metrics = start_metrics(config, None, mock_source, named={}, failed_requests=dict, sink=None)
    assert metrics is not None
    assert metrics in collector().live()
    try:
        metrics.observe_step(step(2))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        labels = {"source": "mock_uniform", "qr_source": "default"}
        assert value(text, "qr_sampler_tokens_total", **labels) == 2
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
    off = QRSamplerConfig()
    assert start_metrics(off, None, mock_source, named={}, failed_requests=dict, sink=None) is None
    base = free_port()
    vllm_config = type("C", (), {"parallel_config": type("P", (), {"data_parallel_rank": 1})()})()
    # The rank-1 replica listens one port above the configured one.
    metrics = start_metrics(
        QRSamplerConfig(metrics_port=base - 1), vllm_config, mock_source,
        named={}, failed_requests=dict, sink=None,
    )  # fmt: skip
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
