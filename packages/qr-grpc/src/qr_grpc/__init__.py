"""qr_grpc: the entropy gRPC protocol, a client source with a circuit breaker, and servers.

`QuantumGrpcSource` is registered as ``quantum_grpc`` in the ``qr_entropy.sources``
entry-point group, so applications select it by name and never import this package.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from qr_grpc import entropy_service_pb2, entropy_service_pb2_grpc
from qr_grpc._address import GrpcAddress, parse_address
from qr_grpc._breaker import CircuitBreaker, CircuitState
from qr_grpc._errors import (
    CircuitOpenError,
    GrpcConfigError,
    GrpcEntropyUnavailableError,
    QRGrpcError,
)
from qr_grpc._settings import (
    DEFAULT_MAX_BYTES_PER_REQUEST,
    DEFAULT_METHOD_PATH,
    DEFAULT_STREAM_METHOD_PATH,
    GrpcMode,
    GrpcSettings,
)
from qr_grpc.server import EntropyServer, serve
from qr_grpc.source import QuantumGrpcSource

__version__ = _version("qr-grpc")

__all__ = [
    "DEFAULT_MAX_BYTES_PER_REQUEST",
    "DEFAULT_METHOD_PATH",
    "DEFAULT_STREAM_METHOD_PATH",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "EntropyServer",
    "GrpcAddress",
    "GrpcConfigError",
    "GrpcEntropyUnavailableError",
    "GrpcMode",
    "GrpcSettings",
    "QRGrpcError",
    "QuantumGrpcSource",
    "__version__",
    "entropy_service_pb2",
    "entropy_service_pb2_grpc",
    "parse_address",
    "serve",
]
