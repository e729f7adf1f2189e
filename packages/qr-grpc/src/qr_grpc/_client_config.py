"""Turn validated `GrpcSettings` into what the transport needs: TLS bytes, metadata, options."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from qr_grpc._address import GrpcAddress
from qr_grpc._errors import GrpcConfigError
from qr_grpc._settings import RESPONSE_FRAMING_BYTES, GrpcSettings
from qr_grpc._transport import TransportConfig

__all__ = ["load_settings", "transport_config"]


def _read_pem(label: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise GrpcConfigError(
            f"{label}={str(path)!r} cannot be read ({error.strerror or error}); "
            "give the path of a readable PEM file"
        ) from None


def transport_config(settings: GrpcSettings, address: GrpcAddress) -> TransportConfig:
    """Check the settings that depend on each other and read the TLS files.

    Raises:
        GrpcConfigError: A streaming mode without a stream method path, half a client
            certificate pair, or an unreadable TLS file.
    """
    if settings.grpc_mode != "unary" and not settings.grpc_stream_method_path:
        raise GrpcConfigError(
            f"grpc_mode={settings.grpc_mode!r} needs grpc_stream_method_path, which is "
            "empty; set it or use grpc_mode='unary'"
        )
    cert, key = settings.grpc_tls_cert_file, settings.grpc_tls_key_file
    if (cert is None) != (key is None):
        raise GrpcConfigError(
            "grpc_tls_cert_file and grpc_tls_key_file must be set together for mutual "
            f"TLS (got cert={cert!s}, key={key!s})"
        )
    use_tls = settings.grpc_tls or settings.grpc_tls_ca_file is not None or cert is not None
    tls = (
        (
            _read_pem("grpc_tls_ca_file", settings.grpc_tls_ca_file),
            _read_pem("grpc_tls_key_file", key),
            _read_pem("grpc_tls_cert_file", cert),
        )
        if use_tls
        else None
    )
    api_key = settings.grpc_api_key.get_secret_value()
    metadata = ((settings.grpc_api_key_header, api_key),) if api_key else ()
    # Responses carry at most grpc_max_bytes_per_request bytes of payload (fetches are
    # split to fit), requests are a few bytes.
    max_bytes = settings.grpc_max_bytes_per_request + RESPONSE_FRAMING_BYTES
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        # Channels in a process share connections (subchannels) by default, and with
        # them the reconnect backoff of a failed one; a rebuilt channel must really
        # reconnect, so each channel keeps its own.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    server_name = settings.grpc_tls_server_name
    if not server_name and tls is not None and address.kind == "unix":
        # grpc would check the socket path against the certificate; a local socket's
        # certificate names the local host.
        server_name = "localhost"
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return TransportConfig(
        target=address.target,
        mode=settings.grpc_mode,
        method_path=settings.grpc_method_path,
        stream_method_path=settings.grpc_stream_method_path,
        metadata=metadata,
        tls=tls,
        options=tuple(options),
    )


def load_settings(overrides: dict[str, object]) -> GrpcSettings:
    """`GrpcSettings` from the environment plus ``overrides``; errors name the variable."""
    try:
        return GrpcSettings(**overrides)  # type: ignore[arg-type]  # validated by pydantic
    except ValidationError as error:
        problems = "; ".join(
            f"QR_{'_'.join(str(p) for p in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in error.errors()
        )
        raise GrpcConfigError(f"invalid gRPC settings: {problems}") from None
