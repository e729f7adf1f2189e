"""Prometheus metrics of ``qr-entropy-server``: what it served, how fast, and its source's state.

Optional: ``prometheus_client`` comes with the ``qr-grpc[metrics]`` extra and is
imported only when `ServerMetrics` is made (``--metrics-port``), so a client that
installs qr-grpc for the ``quantum_grpc`` source never needs it.

The servicer's two methods are wrapped (`ServerMetrics.instrument`), so the
server itself holds no metrics code. One EntropyRequest message is one request:
a unary call, or one message of a stream. Label sets are bounded: ``method``
(``GetEntropy``, ``StreamEntropy``) and the gRPC status ``code``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from qr_entropy import EntropySource

__all__ = ["LATENCY_BUCKETS_S", "ServerMetrics"]

# The server's events share one logger name, whichever module logs them.
logger = logging.getLogger("qr_grpc.server")

#: Upper bounds (seconds) of the per-request latency histogram.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

_UNARY = "GetEntropy"
_STREAM = "StreamEntropy"

Unary = Callable[[Any, Any], Any]
Stream = Callable[[Iterator[Any], Any], Iterator[Any]]


class ServerMetrics:
    """The metrics of one entropy server, in a registry of their own.

    Args:
        source: The source being served (its health tests and availability are read
            at scrape time).

    Raises:
        ImportError: prometheus_client is not installed (``pip install 'qr-grpc[metrics]'``).
    """

    def __init__(self, source: EntropySource) -> None:
        from prometheus_client import (  # noqa: PLC0415
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
        )

        self.source = source
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "qr_entropy_server_requests",
            "EntropyRequest messages answered, by method and gRPC status code.",
            ["method", "code"],
            registry=reg,
        )
        self.bytes_served = Counter(
            "qr_entropy_server_bytes_served",
            "Entropy bytes sent, by method.",
            ["method"],
            registry=reg,
        )
        self.latency = Histogram(
            "qr_entropy_server_request_seconds",
            "Time from a request's arrival to its response, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.active_streams = Gauge(
            "qr_entropy_server_active_streams", "StreamEntropy streams open now.", registry=reg
        )
        reg.register(_SourceCollector(source))
        self._endpoint: Any = None

    # --- wrapping ----------------------------------------------------------------

    def instrument(self, unary: Unary, stream: Stream) -> tuple[Unary, Stream]:
        """The servicer's GetEntropy and StreamEntropy, counted and timed."""
        return self._wrap_unary(unary), self._wrap_stream(stream)

    def _wrap_unary(self, method: Unary) -> Unary:
        def get_entropy(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                response = method(request, context)
            except BaseException:
                self.requests.labels(_UNARY, _code(context)).inc()
                raise
            self._served(_UNARY, response, started)
            return response

        return get_entropy

    def _wrap_stream(self, method: Stream) -> Stream:
        def stream_entropy(request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            arrived = [time.perf_counter()]

            def stamped() -> Iterator[Any]:
                for request in request_iterator:
                    arrived[0] = time.perf_counter()
                    yield request

            self.active_streams.inc()
            try:
                for response in method(stamped(), context):
                    self._served(_STREAM, response, arrived[0])
                    yield response
            except GeneratorExit:
                raise  # the client went away: nothing was refused
            except BaseException:
                self.requests.labels(_STREAM, _code(context)).inc()
                raise
            finally:
                self.active_streams.dec()

        return stream_entropy

    def _served(self, method: str, response: Any, started: float) -> None:
        self.latency.labels(method).observe(time.perf_counter() - started)
        self.requests.labels(method, "OK").inc()
        self.bytes_served.labels(method).inc(len(response.data))

    # --- exposition --------------------------------------------------------------

    def start_endpoint(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one); returns the port.

        Raises:
            OSError: The address cannot be bound.
        """
        from prometheus_client import start_http_server  # noqa: PLC0415

        self._endpoint, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._endpoint.server_port)
        logger.info("event=metrics address=http://%s:%d/metrics", host, bound)
        return bound

    def stop_endpoint(self) -> None:
        """Stop the ``/metrics`` server (idempotent)."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.shutdown()
            endpoint.server_close()


class _SourceCollector:
    """Scrape-time state of the source: availability and health-test failures by test."""

    def __init__(self, source: EntropySource) -> None:
        self._source = source

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        name = self._source.name
        up = GaugeMetricFamily(
            "qr_entropy_server_source_available",
            "1 while the served source reports itself available, else 0.",
            labels=["source"],
        )
        try:
            available = bool(self._source.is_available)
        except Exception:
            available = False
        up.add_metric([name], 1.0 if available else 0.0)
        yield up
        health = CounterMetricFamily(
            "qr_entropy_server_health_test_failures",
            "SP 800-90B continuous health-test failures of the served source, by test.",
            labels=["source", "test"],
        )
        monitor = getattr(self._source, "health_monitor", None)
        if monitor is not None:
            health.add_metric([name, "repetition_count"], monitor.repetition_failures)
            health.add_metric([name, "adaptive_proportion"], monitor.proportion_failures)
        yield health


def _code(context: Any) -> str:
    """The gRPC status code a failed call ended with (UNKNOWN when none was set)."""
    getter = getattr(context, "code", None)
    code = getter() if callable(getter) else None
    return str(getattr(code, "name", "UNKNOWN")) if code is not None else "UNKNOWN"
