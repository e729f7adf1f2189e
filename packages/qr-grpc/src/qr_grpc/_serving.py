"""Start a reference entropy server in this process: `serve` binds it, `EntropyServer` stops it."""

from __future__ import annotations

import logging
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from qr_entropy import EntropySource

from qr_grpc._address import GrpcAddress, parse_address
from qr_grpc._errors import GrpcConfigError
from qr_grpc._proto import entropy_service_pb2
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse
from qr_grpc._server_metrics import ServerMetrics
from qr_grpc._servicer import EntropyServicer
from qr_grpc._settings import DEFAULT_MAX_BYTES_PER_REQUEST, RESPONSE_FRAMING_BYTES

__all__ = ["DEFAULT_MAX_BYTES_PER_REQUEST", "SERVICE_NAME", "EntropyServer", "serve"]

# DEFAULT_MAX_BYTES_PER_REQUEST (4 MiB) is the client's default too, so the two agree.

# The server's events share one logger name, whichever module logs them.
logger = logging.getLogger("qr_grpc.server")

_SERVICE = entropy_service_pb2.DESCRIPTOR.services_by_name["EntropyService"]
SERVICE_NAME: str = _SERVICE.full_name


def _prepare_unix_socket(address: GrpcAddress) -> None:
    """Remove a stale socket file left by a dead server; refuse a live one or a non-socket."""
    path = Path(address.path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise GrpcConfigError(
            f"--address {address}: {path} exists and is not a socket; refusing to replace it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        logger.info("event=removed_stale_socket path=%s", path)
        return
    finally:
        probe.close()
    raise GrpcConfigError(f"--address {address}: another server is listening on {path}")


@dataclass(frozen=True, slots=True)
class _Bound:
    address: GrpcAddress
    socket_path: Path | None


class EntropyServer:
    """Handle of a running entropy server (returned by `serve`).

    Attributes:
        address: The bound address (with the real port when port 0 was asked for).
        source: The entropy source being served.
    """

    def __init__(
        self,
        server: Any,
        *,
        executor: ThreadPoolExecutor,
        health_servicer: Any,
        servicer: EntropyServicer,
        bound: _Bound,
        source: EntropySource,
        close_source: bool,
    ) -> None:
        self._server = server
        self._executor = executor
        self._health = health_servicer
        self._servicer = servicer
        self._bound = bound
        self.address: GrpcAddress = bound.address
        self.source = source
        self._close_source = close_source
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting calls, let running ones finish for ``grace_s``, then clean up.

        Health turns NOT_SERVING first so load balancers drain; the Unix socket file is
        removed; the source is closed if `serve` built it. Idempotent and thread-safe.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._health.enter_graceful_shutdown()
            done = self._server.stop(grace_s)
            self._servicer.stopping.set()
            done.wait()
            self._executor.shutdown(wait=True)
            if self._bound.socket_path is not None:
                self._bound.socket_path.unlink(missing_ok=True)
            if self._close_source:
                self.source.close()
            self._stopped.set()
            logger.info("event=stopped address=%s", self.address)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until `stop` has finished; returns False on timeout."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> EntropyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    source: EntropySource,
    address: str,
    *,
    max_bytes_per_request: int = DEFAULT_MAX_BYTES_PER_REQUEST,
    api_key: str = "",
    api_key_header: str = "api-key",
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
    tls_client_ca_file: str | Path | None = None,
    device_id: str = "",
    delay_ms: float = 0.0,
    delay_jitter_ms: float = 0.0,
    max_workers: int = 16,
    close_source: bool = False,
    metrics: ServerMetrics | None = None,
) -> EntropyServer:
    """Start an entropy server in this process and return its handle.

    Args:
        source: The source whose bytes are served.
        address: ``host:port`` (port 0 picks a free one), ``[ipv6]:port`` or
            ``unix:///absolute/path`` (a stale socket file there is removed).
        max_bytes_per_request: Larger requests (and ``bytes_needed <= 0``) get
            INVALID_ARGUMENT.
        api_key: When set, every EntropyService call must carry it in ``api_key_header``
            (UNAUTHENTICATED otherwise). The health service stays open for probes.
        api_key_header: Metadata header of the key.
        tls_cert_file: Server certificate chain (PEM); with ``tls_key_file`` enables TLS.
        tls_key_file: Server private key (PEM).
        tls_client_ca_file: When set, clients must present a certificate signed by it.
        device_id: Reported in every response; defaults to the source's device or name.
        delay_ms: Test and diagnostic aid: sleep this long before each response, to
            simulate a slow device.
        delay_jitter_ms: Test and diagnostic aid: add a uniformly random extra delay of
            up to this long to each response, to simulate a jittery device.
        max_workers: Threads serving calls; each open bidi stream holds one.
        close_source: Close ``source`` when the server stops.
        metrics: Count and time every request in these Prometheus metrics.

    Returns:
        The running server.

    Raises:
        GrpcConfigError: A bad address, option or TLS file, or the address is in use.
    """
    parsed = parse_address(address, allow_port_zero=True)
    if max_bytes_per_request < 1:
        raise GrpcConfigError(f"max_bytes_per_request={max_bytes_per_request} must be >= 1")
    if delay_ms < 0:
        raise GrpcConfigError(f"delay_ms={delay_ms} must be >= 0")
    if delay_jitter_ms < 0:
        raise GrpcConfigError(f"delay_jitter_ms={delay_jitter_ms} must be >= 0")
    if max_workers < 1:
        raise GrpcConfigError(f"max_workers={max_workers} must be >= 1")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise GrpcConfigError("tls_cert_file and tls_key_file must be given together")
    if tls_client_ca_file is not None and tls_cert_file is None:
        raise GrpcConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")
    credentials = None
    if tls_cert_file is not None and tls_key_file is not None:
        pems = {}
        for label, path in (
            ("tls_cert_file", tls_cert_file),
            ("tls_key_file", tls_key_file),
            ("tls_client_ca_file", tls_client_ca_file),
        ):
            if path is None:
                continue
            try:
                pems[label] = Path(path).read_bytes()
            except OSError as error:
                raise GrpcConfigError(
                    f"{label}={str(path)!r} cannot be read ({error.strerror or error})"
                ) from None
        client_ca = pems.get("tls_client_ca_file")
        credentials = grpc.ssl_server_credentials(
            [(pems["tls_key_file"], pems["tls_cert_file"])],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="qr-entropy-server")
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_send_message_length", max_bytes_per_request + RESPONSE_FRAMING_BYTES),
            ("grpc.max_receive_message_length", RESPONSE_FRAMING_BYTES),
            # Refuse a second server on the same TCP port instead of sharing it silently.
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = EntropyServicer(
        source,
        max_bytes=max_bytes_per_request,
        api_key=api_key,
        api_key_header=api_key_header,
        device_id=device_id,
        delay_s=delay_ms / 1000.0,
        jitter_s=delay_jitter_ms / 1000.0,
    )
    get_entropy: Any = servicer.GetEntropy
    stream_entropy: Any = servicer.StreamEntropy
    if metrics is not None:
        get_entropy, stream_entropy = metrics.instrument(get_entropy, stream_entropy)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE_NAME,
                {
                    "GetEntropy": grpc.unary_unary_rpc_method_handler(
                        get_entropy,
                        request_deserializer=EntropyRequest.FromString,
                        response_serializer=EntropyResponse.SerializeToString,
                    ),
                    "StreamEntropy": grpc.stream_stream_rpc_method_handler(
                        stream_entropy,
                        request_deserializer=EntropyRequest.FromString,
                        response_serializer=EntropyResponse.SerializeToString,
                    ),
                },
            ),
        )
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    socket_path = None
    if parsed.kind == "unix":
        _prepare_unix_socket(parsed)
        socket_path = Path(parsed.path)
    try:
        if credentials is None:
            port = server.add_insecure_port(parsed.target)
        else:
            port = server.add_secure_port(parsed.target, credentials)
    except RuntimeError as error:
        raise GrpcConfigError(f"cannot bind {parsed}: {error}") from None
    bound = parsed.with_port(port) if parsed.kind == "tcp" else parsed
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "event=serving address=%s source=%s tls=%s mutual_tls=%s api_key=%s "
        "max_bytes_per_request=%d delay_ms=%g delay_jitter_ms=%g",
        bound,
        source.name,
        credentials is not None,
        tls_client_ca_file is not None,
        "required" if api_key else "none",
        max_bytes_per_request,
        delay_ms,
        delay_jitter_ms,
    )
    return EntropyServer(
        server,
        executor=executor,
        health_servicer=health_servicer,
        servicer=servicer,
        bound=_Bound(bound, socket_path),
        source=source,
        close_source=close_source,
    )
