"""The exception hierarchy of qr_grpc, rooted in qr_entropy's so callers catch one family."""

from __future__ import annotations

from qr_entropy import EntropyConfigError, EntropyUnavailableError, QREntropyError

__all__ = [
    "CircuitOpenError",
    "GrpcConfigError",
    "GrpcEntropyUnavailableError",
    "QRGrpcError",
]


class QRGrpcError(QREntropyError):
    """Root of every error raised by qr_grpc."""


class GrpcConfigError(QRGrpcError, EntropyConfigError):
    """A bad address, mode, TLS file or server option; the message names the value."""


class GrpcEntropyUnavailableError(QRGrpcError, EntropyUnavailableError):
    """The gRPC server did not deliver the requested bytes (so a fallback may take over)."""


class CircuitOpenError(GrpcEntropyUnavailableError):
    """The circuit breaker is open: the request was refused without touching the network."""
