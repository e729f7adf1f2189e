"""qr_grpc: the entropy gRPC protocol, a client source with a circuit breaker, and servers.

`QuantumGrpcSource` is registered as ``quantum_grpc`` in the ``qr_entropy.sources``
entry-point group, so applications select it by name and never import this package.
The server (`EntropyServer`, `serve`) is imported on first access: loading the
client through its entry point does not import the server or its health service.
"""

from __future__ import annotations

from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

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
from qr_grpc.source import QuantumGrpcSource

if TYPE_CHECKING:
    from qr_grpc.server import EntropyServer, serve

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

_LAZY = frozenset({"EntropyServer", "serve"})


def __getattr__(name: str) -> Any:
    # The server's names load on first access (PEP 562), so importing the client does not
    # import the server module, grpc-health's servicer or the logging set-up.
    if name in _LAZY:
        from qr_grpc import server  # noqa: PLC0415 -- lazy by design

        value = getattr(server, name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
