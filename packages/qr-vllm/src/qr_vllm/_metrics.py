"""`SamplerMetrics`: the plugin's operational counters, kept where tokens are sampled.

The hot path only adds to plain Python numbers here (a few additions and two
bisections per step, no locks, no prometheus_client objects): the Prometheus
exposition is built from them when a scrape comes (`qr_vllm._metrics_export`).
State that other parts already keep (records written / dropped / queued, failed
requests, health-test failures, the circuit breaker) is read at scrape time
instead of being counted twice.

Every series carries one label, ``source``: the name of the configured
(primary) entropy source, so label sets stay bounded whatever the requests
send. See README "Monitoring" for what each metric means.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qr_entropy import EntropySource, FallbackEntropySource

from qr_vllm._drift import DriftMonitor
from qr_vllm._records import StepRecords

__all__ = [
    "FETCH_BUCKETS_S",
    "STEP_BUCKETS_S",
    "Histogram",
    "SamplerMetrics",
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


# eq=False: compared and hashed by identity (kept in a WeakSet by the exporter).
@dataclass(eq=False)
class SamplerMetrics:
    """The metrics of one processor (one engine's sampling rank).

    Args:
        source: The processor's entropy source (fallback wrapper included).
        drift: The drift monitor fed with every ok, non-fallback token's z-score.
        failed_requests: Reads the processor's count of failed requests.
        records: Reads the records sink's counters (None: no records file).
    """

    source: EntropySource
    drift: DriftMonitor
    failed_requests: Callable[[], int] = lambda: 0
    records: Callable[[], Mapping[str, object]] | None = None
    source_name: str = ""
    tokens: int = 0
    fallback_tokens: int = 0
    failed_tokens: int = 0
    bytes_fetched: int = 0
    fetch_seconds: Histogram = field(default_factory=lambda: Histogram(FETCH_BUCKETS_S))
    step_seconds: Histogram = field(default_factory=lambda: Histogram(STEP_BUCKETS_S))

    def __post_init__(self) -> None:
        if not self.source_name:
            self.source_name = primary_source(self.source).name

    # --- hot path ---------------------------------------------------------------

    def observe_step(self, step: StepRecords) -> None:
        """Count one group of records of one step (called by the sampling logger)."""
        n = len(step)
        if step.status != "ok":
            self.failed_tokens += n
            return
        self.tokens += n
        self.bytes_fetched += sum(info.sample_count for info in step.requests)
        self.fetch_seconds.observe(step.fetch_latency_ns / 1e9)
        if step.is_fallback:
            self.fallback_tokens += n
        elif step.values is not None:
            self.drift.observe(self.source_name, step.values[:, _Z_COLUMN])

    def observe_step_time(self, seconds: float) -> None:
        """Count one call of the processor's ``apply`` that sampled rows."""
        self.step_seconds.observe(seconds)

    # --- scrape time --------------------------------------------------------------

    def health_failures(self) -> dict[str, int]:
        """SP 800-90B failures of the configured source by test (empty: no monitor)."""
        monitor = getattr(primary_source(self.source), "health_monitor", None)
        if monitor is None:
            return {}
        return {
            "repetition_count": int(getattr(monitor, "repetition_failures", 0)),
            "adaptive_proportion": int(getattr(monitor, "proportion_failures", 0)),
        }

    def breaker(self) -> tuple[str, Mapping[str, int]] | None:
        """``(state, entries into each state)`` of the source's circuit breaker, if it has one."""
        breaker: Any = getattr(primary_source(self.source), "circuit_breaker", None)
        if breaker is None:
            return None
        state = getattr(breaker.state, "value", str(breaker.state))
        transitions = getattr(breaker, "transitions", None)
        return str(state), dict(transitions) if transitions is not None else {}
