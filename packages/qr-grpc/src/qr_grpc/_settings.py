"""Settings of the gRPC client source, read from ``QR_GRPC_*`` / ``QR_CB_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings
from qr_entropy import QR_SETTINGS_CONFIG

__all__ = [
    "DEFAULT_MAX_BYTES_PER_REQUEST",
    "DEFAULT_METHOD_PATH",
    "DEFAULT_STREAM_METHOD_PATH",
    "DEFAULT_TIMEOUT_MS",
    "RESPONSE_FRAMING_BYTES",
    "GrpcMode",
    "GrpcSettings",
]

DEFAULT_METHOD_PATH = "/qr_entropy.EntropyService/GetEntropy"
DEFAULT_STREAM_METHOD_PATH = "/qr_entropy.EntropyService/StreamEntropy"

GrpcMode = Literal["unary", "server_streaming", "bidi_streaming"]

#: Deadline of one fetch: generous for a healthy server on a loaded host (tens of ms
#: is a bad moment there), short enough that a hung server stalls a step for 1 s.
DEFAULT_TIMEOUT_MS = 1000.0
#: The reference server's default --max-bytes-per-request, so client and server agree.
DEFAULT_MAX_BYTES_PER_REQUEST = 4 * 1024 * 1024
#: Room a response needs around its payload (sequence id, timestamp, device id).
RESPONSE_FRAMING_BYTES = 64 * 1024


class GrpcSettings(BaseSettings):
    """How `QuantumGrpcSource` reaches its server and when it gives up on it.

    Every field is read from ``QR_<FIELD_NAME>`` (``QR_GRPC_SERVER_ADDRESS``,
    ``QR_CB_WINDOW_SIZE``...) or a ``.env`` file in the working directory; keyword
    arguments win over both. Unknown ``QR_*`` keys are ignored so one ``.env`` serves
    every qr-sampler package.
    """

    model_config = QR_SETTINGS_CONFIG

    grpc_server_address: str = Field(
        default="localhost:50051",
        description="Server address: 'host:port', '[ipv6]:port' or 'unix:///absolute/path'.",
    )
    grpc_timeout_ms: float = Field(
        default=DEFAULT_TIMEOUT_MS,
        gt=0,
        le=600_000,
        description=(
            "Deadline of one fetch in milliseconds, retries and split requests included, "
            "used exactly as written: a slow but healthy server is waited for until then, "
            "and a hung one (stopped process, stalled stream) is declared failed then. "
            "Lower detects a hung server sooner but fails a slow host's fetches; higher "
            "stalls each decode step longer while a server hangs (until the breaker opens). "
            "A refused or lost connection fails at once, whatever this is."
        ),
    )
    grpc_retry_count: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "Extra attempts, within the deadline, after a lost or refused connection "
            "(each on a rebuilt channel). More rides out a server restart; each extra "
            "attempt against a dead server costs one connection attempt (fast)."
        ),
    )
    grpc_mode: GrpcMode = Field(
        default="unary",
        description="Transport mode: 'unary', 'server_streaming' or 'bidi_streaming'.",
    )
    grpc_method_path: str = Field(
        default=DEFAULT_METHOD_PATH,
        description="Full path of the unary method ('/package.Service/Method').",
    )
    grpc_stream_method_path: str = Field(
        default=DEFAULT_STREAM_METHOD_PATH,
        description="Full path of the bidi streaming method; empty disables the streaming modes.",
    )
    grpc_api_key: SecretStr = Field(
        default=SecretStr(""),
        description="API key sent in request metadata; empty sends none. Never logged.",
    )
    grpc_api_key_header: str = Field(
        default="api-key",
        description="Metadata header that carries the API key (lowercase, not ending in -bin).",
    )
    grpc_tls: bool = Field(
        default=False,
        description="Use TLS even without a CA file (the system's trusted roots check the server).",
    )
    grpc_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the server certificate (enables TLS).",
    )
    grpc_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM client certificate for mutual TLS (needs grpc_tls_key_file).",
    )
    grpc_tls_key_file: Path | None = Field(
        default=None,
        description="PEM private key of the client certificate (needs grpc_tls_cert_file).",
    )
    grpc_tls_server_name: str = Field(
        default="",
        description=(
            "Name to check in the server certificate instead of the address host "
            "(for IP literals whose certificate names a host); Unix sockets default to "
            "'localhost'."
        ),
    )
    grpc_max_bytes_per_request: int = Field(
        default=DEFAULT_MAX_BYTES_PER_REQUEST,
        ge=1,
        le=2**31 - 1 - RESPONSE_FRAMING_BYTES,
        description=(
            "Largest bytes_needed of one request; a larger fetch is split into several "
            "requests. Must not exceed the server's limit (the reference server's "
            "--max-bytes-per-request, 4 MiB by default, so the defaults agree). Larger "
            "means fewer round trips for huge steps; the channel accepts messages of "
            "this plus 64 KiB of framing."
        ),
    )
    cb_window_size: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Fetch latencies kept for the P99 that health reports show.",
    )
    cb_recovery_window_s: float = Field(
        default=10.0,
        ge=0,
        description=(
            "Seconds the open breaker refuses fetches (the fallback serves them) before "
            "one probe fetch goes through. Shorter returns to the server sooner; each "
            "probe of a hung server stalls one step for up to grpc_timeout_ms."
        ),
    )
    cb_max_consecutive_failures: int = Field(
        default=3,
        ge=1,
        description=(
            "Failed fetches in a row (not attempts: a retried fetch counts once) that "
            "open the breaker. Lower gives up on a failing server sooner; higher rides "
            "out more isolated failures."
        ),
    )

    @field_validator("grpc_tls_ca_file", "grpc_tls_cert_file", "grpc_tls_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `QR_GRPC_TLS_CA_FILE=` in a .env file means "no file", not the current directory.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("grpc_method_path", "grpc_stream_method_path")
    @classmethod
    def _check_method_path(cls, value: str) -> str:
        value = value.strip()
        if value == "":
            return value
        parts = value.split("/")
        if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2]:
            raise ValueError(f"method path {value!r} must look like '/package.Service/Method'")
        return value

    @field_validator("grpc_api_key_header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        # gRPC metadata keys are lowercase ASCII; '-bin' marks binary values, not strings.
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
        if not value or not set(value) <= allowed or value.endswith("-bin") or value[0] == ":":
            raise ValueError(
                f"grpc_api_key_header {value!r} must be a lowercase metadata key of "
                "[a-z0-9-_.] not ending in '-bin'"
            )
        return value
