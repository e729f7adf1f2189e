"""The Prometheus exposition of the plugin's metrics: one collector, one endpoint per process.

The processor runs where vLLM samples: the engine-core process (or, with
``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the API-server process itself). The
endpoint is therefore the plugin's own HTTP server in that process, on
``QR_METRICS_HOST:QR_METRICS_PORT`` (plus vLLM's data-parallel rank, so replicas
never collide). See ARCHITECTURE.md, design note "Metrics across processes".

The collector is a custom one, registered in a private registry: values are
read from the live `SamplerMetrics` objects when a scrape comes. It never
touches prometheus_client's default registry or its multiprocess files, so it
neither collides with vLLM's own metrics nor depends on
``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from qr_entropy import EntropySource

from qr_vllm._config import QRSamplerConfig
from qr_vllm._drift import DriftMonitor
from qr_vllm._metrics import SamplerMetrics
from qr_vllm._sink import JsonlRecordSink

__all__ = [
    "MetricsCollector",
    "collector",
    "register",
    "start_endpoint",
    "start_metrics",
    "unregister",
]

logger = logging.getLogger("qr_sampler")

_PREFIX = "qr_sampler"
_BREAKER_STATES = ("closed", "open", "half_open")


class MetricsCollector:
    """Yields the metric families of every live `SamplerMetrics` of this process."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[SamplerMetrics] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, metrics: SamplerMetrics) -> None:
        with self._lock:
            self._live.add(metrics)

    def discard(self, metrics: SamplerMetrics) -> None:
        with self._lock:
            self._live.discard(metrics)

    def live(self) -> list[SamplerMetrics]:
        with self._lock:
            return list(self._live)

    def describe(self) -> list[Any]:
        return []  # families are built per scrape; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        live = self.live()
        src = ["source"]

        def counter(name: str, doc: str, labels: list[str] = src) -> Any:
            return CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str] = src) -> Any:
            return GaugeMetricFamily(f"{_PREFIX}_{name}", doc, labels=labels)

        tokens = counter("tokens", "Tokens chosen with entropy (fallback bytes included).")
        fallback = counter("fallback_tokens", "Tokens whose bytes came from the fallback source.")
        failed_tokens = counter("failed_tokens", "Records of failed requests (no entropy).")
        failed = counter("failed_requests", "Requests ended because no entropy could be had.")
        nbytes = counter("entropy_bytes", "Entropy bytes fetched for tokens.")
        health = counter(
            "health_test_failures",
            "SP 800-90B continuous health-test failures of the source, by test.",
            ["source", "test"],
        )
        state = gauge(
            "breaker_state", "1 for the circuit breaker's current state.", ["source", "state"]
        )
        transitions = counter(
            "breaker_transitions", "Circuit-breaker entries into each state.", ["source", "state"]
        )
        drift = gauge(
            "drift_z",
            "Stouffer Z of the tokens' z-scores (window: sliding, lifetime: since start).",
            ["source", "window"],
        )
        drift_n = gauge("drift_tokens", "Tokens behind drift_z.", ["source", "window"])
        written = counter("records_written", "Records written to the records file.", [])
        dropped = counter("records_dropped", "Records dropped (writer behind, disk error).", [])
        queued = gauge("records_queued_steps", "Steps waiting for the records writer.", [])
        fetch = HistogramMetricFamily(
            f"{_PREFIX}_entropy_fetch_seconds",
            "Wall time of each step's entropy fetch.",
            labels=src,
        )
        step = HistogramMetricFamily(
            f"{_PREFIX}_step_seconds", "Wall time of the processor's apply per step.", labels=src
        )
        # Several processors of one process (tests, tools) may share a source name:
        # counters and histograms add up, gauges take the last one seen.
        # Metric families are not hashable: the tables are keyed by the family's name.
        families = {f.name: f for f in (tokens, fallback, failed_tokens, failed, nbytes, health)}
        families.update({f.name: f for f in (fetch, step, state, transitions, drift, drift_n)})
        families.update({f.name: f for f in (written, dropped, queued)})
        sums: dict[tuple[str, tuple[str, ...]], float] = {}
        last: dict[tuple[str, tuple[str, ...]], float] = {}
        hists: dict[tuple[str, str], tuple[list[float], float]] = {}
        les: dict[str, list[str]] = {}

        def add(family: Any, labels: tuple[str, ...], value: float) -> None:
            key = (family.name, labels)
            sums[key] = sums.get(key, 0.0) + value

        records_seen = False
        for m in live:
            name = (m.source_name,)
            add(tokens, name, m.tokens)
            add(fallback, name, m.fallback_tokens)
            add(failed_tokens, name, m.failed_tokens)
            add(failed, name, int(m.failed_requests()))
            add(nbytes, name, m.bytes_fetched)
            for test, count in m.health_failures().items():
                add(health, (*name, test), count)
            breaker = m.breaker()
            if breaker is not None:
                current, entries = breaker
                for s in _BREAKER_STATES:
                    last[(state.name, (*name, s))] = 1.0 if s == current else 0.0
                    add(transitions, (*name, s), entries.get(s, 0))
            for source, snap in m.drift.snapshot().items():
                last[(drift.name, (source, "sliding"))] = snap.window_z
                last[(drift.name, (source, "lifetime"))] = snap.lifetime_z
                last[(drift_n.name, (source, "sliding"))] = snap.window_tokens
                last[(drift_n.name, (source, "lifetime"))] = snap.lifetime_tokens
            for hist, family in ((m.fetch_seconds, fetch), (m.step_seconds, step)):
                buckets, total, _ = hist.cumulative()
                les[family.name] = [le for le, _ in buckets]
                key = (family.name, m.source_name)
                counts, old_total = hists.get(key, ([0.0] * len(buckets), 0.0))
                hists[key] = (
                    [c + b for c, (_, b) in zip(counts, buckets, strict=True)],
                    old_total + total,
                )
            if m.records is not None:
                stats = m.records()
                records_seen = True
                add(written, (), _int(stats.get("written_records")))
                add(dropped, (), _int(stats.get("dropped_records")))
                add(queued, (), _int(stats.get("pending_steps")))
        if not records_seen:
            for family in (written, dropped, queued):
                add(family, (), 0)
        for (fname, labels), value in (*sums.items(), *last.items()):
            families[fname].add_metric(list(labels), value)
        for (fname, source), (counts, total) in hists.items():
            families[fname].add_metric([source], list(zip(les[fname], counts, strict=True)), total)
        yield from (tokens, fallback, failed_tokens, failed, nbytes, health, fetch, step)
        yield from (state, transitions, drift, drift_n, written, dropped, queued)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


_collector = MetricsCollector()
_endpoints: dict[tuple[str, int], Any] = {}
_endpoints_lock = threading.Lock()
_registry: Any = None


def collector() -> MetricsCollector:
    """The process's collector."""
    return _collector


def register(metrics: SamplerMetrics) -> None:
    """Expose ``metrics`` on this process's endpoint(s) until `unregister`."""
    _collector.add(metrics)


def unregister(metrics: SamplerMetrics) -> None:
    """Stop exposing ``metrics`` (the processor closed)."""
    _collector.discard(metrics)


def registry() -> Any:
    """The private registry holding the collector (made on first use, never at import)."""
    global _registry  # noqa: PLW0603
    with _endpoints_lock:
        if _registry is None:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415

            reg = CollectorRegistry(auto_describe=False)
            reg.register(_collector)
            _registry = reg
        return _registry


def start_endpoint(host: str, port: int) -> bool:
    """Serve ``/metrics`` on ``host:port`` once per process; False (logged) if it cannot bind.

    A busy port must not stop the engine: the metrics stay off, with a warning.
    """
    reg = registry()
    with _endpoints_lock:
        if (host, port) in _endpoints:
            return True
        from prometheus_client import start_http_server  # noqa: PLC0415

        try:
            _endpoints[(host, port)] = start_http_server(port, addr=host, registry=reg)
        except OSError as error:
            logger.warning(
                "qr-sampler metrics endpoint %s:%d not started (%s); set QR_METRICS_PORT to a "
                "free port",
                host,
                port,
                error,
            )
            return False
    logger.info("qr-sampler metrics on http://%s:%d/metrics", host, port)
    return True


def start_metrics(
    config: QRSamplerConfig,
    vllm_config: Any,
    source: EntropySource,
    failed_requests: Callable[[], int],
    sink: JsonlRecordSink | None,
) -> SamplerMetrics | None:
    """The metrics of a new processor (rank 0), exposed on its process's endpoint.

    Returns:
        None when ``QR_METRICS_PORT`` is 0 (metrics and the drift monitor off).
    """
    if config.metrics_port == 0:
        return None
    metrics = SamplerMetrics(
        source,
        DriftMonitor(config.metrics_drift_window, config.metrics_drift_z_threshold),
        failed_requests=failed_requests,
        records=sink.stats if sink is not None else None,
    )
    register(metrics)
    start_endpoint(config.metrics_host, config.metrics_port + _data_parallel_rank(vllm_config))
    return metrics


def _data_parallel_rank(vllm_config: Any) -> int:
    """vLLM's data-parallel rank of this engine (0 without data parallelism)."""
    rank = getattr(getattr(vllm_config, "parallel_config", None), "data_parallel_rank", 0)
    return rank if isinstance(rank, int) and rank > 0 else 0
