"""`SamplerMetrics`: the plugin's operational counters, kept where tokens are sampled.

The hot path only adds to plain Python numbers here (a few additions, one dict
lookup and two bisections per group of records, no locks, no prometheus_client
objects): the Prometheus exposition is built from them when a scrape comes
(`qr_vllm._metrics_export`). State that other parts already keep (records
written / dropped / queued, failed requests, health-test failures, the circuit
breakers) is read at scrape time instead of being counted twice.

Each named source (``default``: the engine's own; else a name of ``QR_SOURCES``)
has its own counters, `SourceMetrics`. Its series carry two labels: ``qr_source``,
the named source (as in records' ``qr_source``), and ``source``, the name of that
named source's configured (primary) entropy source, for example ``quantum_grpc``
(also for tokens a fallback source served). Both come from the configuration, so
label sets stay bounded whatever the requests send. The step time is one per
step, which may serve several named sources: it has no per-source label. See
README "Monitoring" for what each metric means.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qr_entropy import EntropySource, FallbackEntropySource

from qr_vllm._drift import DriftMonitor
from qr_vllm._records import StepRecords
from qr_vllm._sources import DEFAULT_SOURCE

__all__ = [
    "FETCH_BUCKETS_S",
    "STEP_BUCKETS_S",
    "UNKNOWN_SOURCE",
    "Histogram",
    "SamplerMetrics",
    "SourceMetrics",
    "primary_source",
]

#: Upper bounds (seconds) of the entropy-fetch latency histogram.
FETCH_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Upper bounds (seconds) of the processor step-time histogram.
STEP_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: The ``source`` label of a named source outside the configuration.
UNKNOWN_SOURCE = "unknown"

_Z_COLUMN = 7  # StepRecords.values column of z_score


class Histogram:
    """A Prometheus-style histogram with fixed buckets and no lock (one writer thread).

    Args:
        bounds: Increasing upper bounds; an implicit +Inf bucket follows.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must increase strictly, got {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value (in the first bucket whose bound is >= value)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float, int]:
        """``([(le, cumulative count), ...], sum, count)`` with the +Inf bucket last."""
        counts = list(self.counts)  # one consistent copy: the writer may add meanwhile
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, counts, strict=False):
            running += count
            out.append((_float_label(bound), float(running)))
        running += counts[-1]
        out.append(("+Inf", float(running)))
        return out, self.total, running


def _float_label(value: float) -> str:
    return repr(float(value))


def primary_source(source: EntropySource) -> EntropySource:
    """The configured source inside a fallback wrapper (the source itself otherwise)."""
    return source.primary if isinstance(source, FallbackEntropySource) else source


class SourceMetrics:
    """The counters of one named source, and its source's own health tests and breaker.

    Args:
        name: The named source (``qr_source``).
        source: Its entropy source (fallback wrapper included); None for a name
            outside the configuration, labelled ``source="unknown"``.
    """

    __slots__ = (
        "bytes_fetched",
        "failed_tokens",
        "fallback_tokens",
        "fetch_seconds",
        "name",
        "source",
        "source_name",
        "tokens",
    )

    def __init__(self, name: str, source: EntropySource | None) -> None:
        self.name = name
        self.source = source
        self.source_name = primary_source(source).name if source is not None else UNKNOWN_SOURCE
        self.tokens = 0
        self.fallback_tokens = 0
        self.failed_tokens = 0
        self.bytes_fetched = 0
        self.fetch_seconds = Histogram(FETCH_BUCKETS_S)

    @property
    def labels(self) -> tuple[str, str]:
        """``(source, qr_source)``: the label values of this named source's series."""
        return self.source_name, self.name

    def health_failures(self) -> dict[str, int]:
        """SP 800-90B failures of the configured source by test (empty: no monitor)."""
        primary = primary_source(self.source) if self.source is not None else None
        monitor = getattr(primary, "health_monitor", None)
        if monitor is None:
            return {}
        return {
            "repetition_count": int(getattr(monitor, "repetition_failures", 0)),
            "adaptive_proportion": int(getattr(monitor, "proportion_failures", 0)),
        }

    def breaker(self) -> tuple[str, Mapping[str, int]] | None:
        """``(state, entries into each state)`` of the source's circuit breaker, if it has one."""
        primary = primary_source(self.source) if self.source is not None else None
        breaker: Any = getattr(primary, "circuit_breaker", None)
        if breaker is None:
            return None
        state = getattr(breaker.state, "value", str(breaker.state))
        transitions = getattr(breaker, "transitions", None)
        return str(state), dict(transitions) if transitions is not None else {}


# eq=False: compared and hashed by identity (kept in a WeakSet by the exporter).
@dataclass(eq=False)
class SamplerMetrics:
    """The metrics of one processor (one engine's sampling rank).

    Args:
        source: The engine's own entropy source, named ``default`` (fallback wrapper
            included).
        drift: The drift monitor fed with every ok, non-fallback token's z-score,
            keyed by named source.
        failed_requests: Reads the processor's failed requests by named source.
        records: Reads the records sink's counters (None: no records file).
        named: The named sources of ``QR_SOURCES``.
    """

    source: EntropySource
    drift: DriftMonitor
    failed_requests: Callable[[], Mapping[str, int]] = dict
    records: Callable[[], Mapping[str, object]] | None = None
    named: Mapping[str, EntropySource] = field(default_factory=dict)
    step_seconds: Histogram = field(default_factory=lambda: Histogram(STEP_BUCKETS_S))
    #: The counters by named source, ``default`` first. Never changed in place (a
    #: scrape reads it from another thread): a new name replaces the whole dict.
    by_source: dict[str, SourceMetrics] = field(init=False)

    def __post_init__(self) -> None:
        sources = {DEFAULT_SOURCE: self.source, **self.named}
        self.by_source = {name: SourceMetrics(name, src) for name, src in sources.items()}

    def of(self, name: str) -> SourceMetrics:
        """The counters of the named source ``name`` (made for a name not configured)."""
        counts = self.by_source.get(name)
        if counts is None:
            # Not reached from the engine: admission checks every request's qr_source.
            counts = SourceMetrics(name, None)
            self.by_source = {**self.by_source, name: counts}
        return counts

    # --- hot path ---------------------------------------------------------------

    def observe_step(self, step: StepRecords) -> None:
        """Count one group of records of one step (called by the sampling logger).

        An ok group holds one named source's rows (`RecordEmitter.sampled_step`
        makes one per named source); a failed group may hold several (a step that
        failed as a whole), so its rows are counted one by one.
        """
        n = len(step)
        if n == 0:
            return
        requests = step.requests
        if step.status != "ok":
            for info in requests:
                self.of(info.source).failed_tokens += 1
            return
        counts = self.of(requests[0].source)
        counts.tokens += n
        # A token's row is its S bytes and the amplifier's V bytes (randomized_pit: 7).
        counts.bytes_fetched += sum(info.sample_count + info.v_bytes for info in requests)
        counts.fetch_seconds.observe(step.fetch_latency_ns / 1e9)
        if step.is_fallback:
            counts.fallback_tokens += n
        elif step.values is not None:
            self.drift.observe(counts.name, step.values[:, _Z_COLUMN])

    def observe_step_time(self, seconds: float) -> None:
        """Count one call of the processor's ``apply`` that sampled rows (all its sources)."""
        self.step_seconds.observe(seconds)
