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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from qr_entropy import EntropySource

from qr_vllm._config import QRSamplerConfig
from qr_vllm._drift import DriftMonitor
from qr_vllm._metrics import UNKNOWN_SOURCE, Histogram, SamplerMetrics
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

        src = ["source", "qr_source"]  # every per-source series: see qr_vllm._metrics

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=[*src, *labels])

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(f"{_PREFIX}_{name}", doc, labels=[*src, *labels])

        tokens = counter("tokens", "Tokens chosen with entropy (fallback bytes included).")
        fallback = counter("fallback_tokens", "Tokens whose bytes came from the fallback source.")
        failed_tokens = counter("failed_tokens", "Records of failed requests (no entropy).")
        failed = counter("failed_requests", "Requests ended because no entropy could be had.")
        nbytes = counter("entropy_bytes", "Entropy bytes fetched for tokens.")
        health = counter(
            "health_test_failures",
            "SP 800-90B continuous health-test failures of the source, by test.",
            ("test",),
        )
        state = gauge("breaker_state", "1 for the circuit breaker's current state.", ("state",))
        transitions = counter(
            "breaker_transitions", "Circuit-breaker entries into each state.", ("state",)
        )
        drift = gauge(
            "drift_z",
            "Stouffer Z of the tokens' z-scores (window: sliding, lifetime: since start).",
            ("window",),
        )
        drift_n = gauge("drift_tokens", "Tokens behind drift_z.", ("window",))
        written = CounterMetricFamily(
            f"{_PREFIX}_records_written", "Records written to the records file.", labels=[]
        )
        dropped = CounterMetricFamily(
            f"{_PREFIX}_records_dropped", "Records dropped (writer behind, disk error).", labels=[]
        )
        queued = GaugeMetricFamily(
            f"{_PREFIX}_records_queued_steps", "Steps waiting for the records writer.", labels=[]
        )
        fetch = HistogramMetricFamily(
            f"{_PREFIX}_entropy_fetch_seconds",
            "Wall time of each step's entropy fetch, per named source.",
            labels=src,
        )
        step = HistogramMetricFamily(
            f"{_PREFIX}_step_seconds",
            "Wall time of the processor's apply per step (all its named sources: no source label).",
            labels=[],
        )
        # Several processors of one process (tests, tools) may share label values:
        # counters and histograms add up, gauges take the last one seen.
        # Metric families are not hashable: the tables are keyed by the family's name.
        families = {f.name: f for f in (tokens, fallback, failed_tokens, failed, nbytes, health)}
        families.update({f.name: f for f in (fetch, step, state, transitions, drift, drift_n)})
        families.update({f.name: f for f in (written, dropped, queued)})
        sums: dict[tuple[str, tuple[str, ...]], float] = {}
        last: dict[tuple[str, tuple[str, ...]], float] = {}
        hists: dict[tuple[str, tuple[str, ...]], tuple[list[float], float]] = {}
        les: dict[str, list[str]] = {}

        def add(family: Any, labels: tuple[str, ...], value: float) -> None:
            key = (family.name, labels)
            sums[key] = sums.get(key, 0.0) + value

        def add_hist(family: Any, labels: tuple[str, ...], hist: Histogram) -> None:
            buckets, total, _ = hist.cumulative()
            les[family.name] = [le for le, _ in buckets]
            key = (family.name, labels)
            counts, old_total = hists.get(key, ([0.0] * len(buckets), 0.0))
            hists[key] = (
                [c + b for c, (_, b) in zip(counts, buckets, strict=True)],
                old_total + total,
            )

        records_seen = False
        labels: tuple[str, ...]
        for m in self.live():
            by_source = m.by_source  # one consistent dict: it is replaced, never changed
            failures = m.failed_requests()
            for name in failures.keys() - by_source.keys():
                add(failed, (UNKNOWN_SOURCE, name), int(failures[name]))
            for counts in by_source.values():
                labels = counts.labels
                add(tokens, labels, counts.tokens)
                add(fallback, labels, counts.fallback_tokens)
                add(failed_tokens, labels, counts.failed_tokens)
                add(failed, labels, int(failures.get(counts.name, 0)))
                add(nbytes, labels, counts.bytes_fetched)
                add_hist(fetch, labels, counts.fetch_seconds)
                for test, count in counts.health_failures().items():
                    add(health, (*labels, test), count)
                breaker = counts.breaker()
                if breaker is not None:
                    current, entries = breaker
                    for s in _BREAKER_STATES:
                        last[(state.name, (*labels, s))] = 1.0 if s == current else 0.0
                        add(transitions, (*labels, s), entries.get(s, 0))
            for name, snap in m.drift.snapshot().items():
                known = by_source.get(name)
                labels = known.labels if known is not None else (UNKNOWN_SOURCE, name)
                last[(drift.name, (*labels, "sliding"))] = snap.window_z
                last[(drift.name, (*labels, "lifetime"))] = snap.lifetime_z
                last[(drift_n.name, (*labels, "sliding"))] = snap.window_tokens
                last[(drift_n.name, (*labels, "lifetime"))] = snap.lifetime_tokens
            add_hist(step, (), m.step_seconds)
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
        for (fname, labels), (cumulative, total) in hists.items():
            families[fname].add_metric(
                list(labels), list(zip(les[fname], cumulative, strict=True)), total
            )
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
    *,
    named: Mapping[str, EntropySource],
    failed_requests: Callable[[], Mapping[str, int]],
    sink: JsonlRecordSink | None,
) -> SamplerMetrics | None:
    """The metrics of a new processor (rank 0), exposed on its process's endpoint.

    Args:
        source: The engine's own source (``default``); named: those of ``QR_SOURCES``.
        failed_requests: Reads the failed requests by named source.

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
        named=named,
    )
    register(metrics)
    start_endpoint(config.metrics_host, config.metrics_port + _data_parallel_rank(vllm_config))
    return metrics


def _data_parallel_rank(vllm_config: Any) -> int:
    """vLLM's data-parallel rank of this engine (0 without data parallelism)."""
    rank = getattr(getattr(vllm_config, "parallel_config", None), "data_parallel_rank", 0)
    return rank if isinstance(rank, int) and rank > 0 else 0
