"""The ``qr-entropy-server`` console script: serve any qr_entropy source over gRPC.

Run ``qr-entropy-server --help`` for the options. From Python (tests, embedding), `serve`
starts a server in this process and returns an `EntropyServer` handle with ``stop()``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from qr_entropy import (
    AuditLog,
    EntropySettings,
    EntropySource,
    EntropySourceRegistry,
    EntropyUnavailableError,
    QREntropyError,
)

from qr_grpc._address import GrpcAddress, parse_address
from qr_grpc._audit import add_audit_arguments, check_rows, log_served, open_audit_log
from qr_grpc._errors import GrpcConfigError
from qr_grpc._logfmt import LogFormat, configure_logging
from qr_grpc._proto import entropy_service_pb2
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

__all__ = ["DEFAULT_MAX_BYTES_PER_REQUEST", "SERVICE_NAME", "EntropyServer", "main", "serve"]

logger = logging.getLogger(__name__)

#: 4 MiB: a decode step of 64 rows × 20,480 bytes (1.25 MiB) with room to grow.
DEFAULT_MAX_BYTES_PER_REQUEST = 4 * 1024 * 1024
# Framing bytes a response adds around its payload (sequence id, timestamp, device id).
_RESPONSE_HEADROOM_BYTES = 64 * 1024
_SERVICE = entropy_service_pb2.DESCRIPTOR.services_by_name["EntropyService"]
SERVICE_NAME: str = _SERVICE.full_name


class _EntropyServicer:
    """GetEntropy and StreamEntropy over one source, generating bytes per request.

    Bytes are produced when a request arrives, never ahead (just in time). The source is
    used under a lock because sources need not be thread-safe and a hardware device
    serves one read at a time anyway.
    """

    def __init__(
        self,
        source: EntropySource,
        *,
        max_bytes: int,
        api_key: str,
        api_key_header: str,
        device_id: str,
        delay_s: float,
        audit: AuditLog | None = None,
    ) -> None:
        self._audit = audit
        self._source = source
        self._max_bytes = max_bytes
        self._api_key = api_key.encode()
        self._api_key_header = api_key_header
        self._device_id = device_id
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def _authorize(self, context: Any) -> None:
        if not self._api_key:
            return
        presented = b""
        for key, value in context.invocation_metadata() or ():
            if key == self._api_key_header:
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        # compare_digest: the time taken must not tell an attacker how much of a key matched.
        if not hmac.compare_digest(presented, self._api_key):
            logger.warning(
                "event=rejected reason=%s header=%s peer=%s",
                "missing_api_key" if not presented else "wrong_api_key",
                self._api_key_header,
                context.peer(),
            )
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong API key in metadata header {self._api_key_header!r}",
            )

    def _generate(self, request: EntropyRequest, context: Any) -> EntropyResponse:
        n = request.bytes_needed
        if n <= 0 or n > self._max_bytes:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bytes_needed={n} is outside the allowed range 1..{self._max_bytes}",
            )
        check_rows(request, context)
        if self._delay_s:
            # An Event, not time.sleep: stopping the server cuts the simulated delay short.
            self.stopping.wait(self._delay_s)
        try:
            with self._lock:
                fetched = self._source.fetch(n)
        except EntropyUnavailableError as error:
            logger.warning("event=source_unavailable bytes=%d error=%r", n, str(error))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"entropy source unavailable: {error}")
        except QREntropyError as error:
            logger.error("event=source_error bytes=%d error=%r", n, str(error))
            context.abort(grpc.StatusCode.INTERNAL, f"entropy source error: {error}")
        generated_ns = time.time_ns()
        device_id = self._device_id or fetched.provenance.device_id or self._source.name
        if self._audit is not None:
            log_served(
                self._audit,
                request,
                fetched.data,
                time_ns=generated_ns,
                device_id=device_id,
                context=context,
            )
        return EntropyResponse(
            data=fetched.data,
            sequence_id=request.sequence_id,
            generation_timestamp_ns=generated_ns,
            device_id=device_id,
        )

    def GetEntropy(self, request: EntropyRequest, context: Any) -> EntropyResponse:  # noqa: N802
        """Unary RPC: one request, one response."""
        self._authorize(context)
        return self._generate(request, context)

    def StreamEntropy(  # noqa: N802
        self, request_iterator: Iterator[EntropyRequest], context: Any
    ) -> Iterator[EntropyResponse]:
        """Bidi RPC: one response per request, same sequence_id, until the client stops."""
        authorized = False
        for request in request_iterator:
            # Checked on the first request rather than at stream start: a refusal sent
            # while the client is still writing that request races the write, and the
            # client may then see "internal error" instead of UNAUTHENTICATED.
            if not authorized:
                self._authorize(context)
                authorized = True
            yield self._generate(request, context)


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
        servicer: _EntropyServicer,
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
    max_workers: int = 16,
    close_source: bool = False,
    audit_log: AuditLog | None = None,
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
        max_workers: Threads serving calls; each open bidi stream holds one.
        close_source: Close ``source`` when the server stops.
        audit_log: Write a line per response here before sending it; the caller
            closes it after `EntropyServer.stop`.

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
            ("grpc.max_send_message_length", max_bytes_per_request + _RESPONSE_HEADROOM_BYTES),
            ("grpc.max_receive_message_length", _RESPONSE_HEADROOM_BYTES),
            # Refuse a second server on the same TCP port instead of sharing it silently.
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = _EntropyServicer(
        source,
        max_bytes=max_bytes_per_request,
        api_key=api_key,
        api_key_header=api_key_header,
        device_id=device_id,
        delay_s=delay_ms / 1000.0,
        audit=audit_log,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE_NAME,
                {
                    "GetEntropy": grpc.unary_unary_rpc_method_handler(
                        servicer.GetEntropy,
                        request_deserializer=EntropyRequest.FromString,
                        response_serializer=EntropyResponse.SerializeToString,
                    ),
                    "StreamEntropy": grpc.stream_stream_rpc_method_handler(
                        servicer.StreamEntropy,
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
        "max_bytes_per_request=%d delay_ms=%g",
        bound,
        source.name,
        credentials is not None,
        tls_client_ca_file is not None,
        "required" if api_key else "none",
        max_bytes_per_request,
        delay_ms,
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qr-entropy-server",
        description=(
            "Serve random bytes from any qr_entropy source over the qr_entropy.EntropyService "
            "gRPC protocol (GetEntropy unary, StreamEntropy bidi), with the standard "
            "gRPC health service."
        ),
    )
    parser.add_argument(
        "--source",
        default="system",
        help="entropy source name in the qr_entropy.sources registry "
        "(system, timing_noise, mock_uniform or an installed plugin; default: system)",
    )
    parser.add_argument(
        "--address",
        default="localhost:50051",
        help="host:port, [ipv6]:port or unix:///absolute/path (default: localhost:50051)",
    )
    parser.add_argument(
        "--max-bytes-per-request",
        type=int,
        default=DEFAULT_MAX_BYTES_PER_REQUEST,
        help=f"largest bytes_needed served (default: {DEFAULT_MAX_BYTES_PER_REQUEST})",
    )
    parser.add_argument(
        "--api-key-env",
        default="QR_SERVER_API_KEY",
        help="environment variable holding the API key clients must send; unset or empty "
        "means no key (default: QR_SERVER_API_KEY; a variable keeps the key out of ps)",
    )
    parser.add_argument("--api-key-header", default="api-key", help="metadata header of the key")
    parser.add_argument("--tls-cert", help="server certificate chain (PEM); enables TLS")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    parser.add_argument("--device-id", default="", help="device_id reported in responses")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="test/diagnostic aid: sleep this long before every response (simulates a slow device)",
    )
    parser.add_argument("--max-workers", type=int, default=16, help="serving threads")
    parser.add_argument(
        "--grace-s", type=float, default=5.0, help="seconds running calls get on shutdown"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", choices=("logfmt", "json"), default="logfmt", help="log line format"
    )
    add_audit_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status.

    Args:
        argv: Arguments without the program name; None uses ``sys.argv[1:]``.
    """
    args = _parser().parse_args(argv)
    log_format: LogFormat = args.log_format
    configure_logging(args.log_level, log_format)
    try:
        source = EntropySourceRegistry.build(args.source, EntropySettings())
    except QREntropyError as error:
        logger.error("event=startup_failed error=%r", str(error))
        return 2
    audit: AuditLog | None = None
    try:
        audit = open_audit_log(args)
        server = serve(
            source,
            args.address,
            max_bytes_per_request=args.max_bytes_per_request,
            api_key=os.environ.get(args.api_key_env, ""),
            api_key_header=args.api_key_header,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            device_id=args.device_id,
            delay_ms=args.delay_ms,
            max_workers=args.max_workers,
            close_source=True,
            audit_log=audit,
        )
    except GrpcConfigError as error:
        source.close()
        if audit is not None:
            audit.close()
        logger.error("event=startup_failed error=%r", str(error))
        return 2

    def _shutdown(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        logger.info("event=shutdown signal=%s grace_s=%g", name, args.grace_s)
        # stop() blocks for the grace period; run it off the signal handler's frame.
        threading.Thread(target=server.stop, args=(args.grace_s,), daemon=True).start()

    previous = {sig: signal.signal(sig, _shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not server.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
        server.stop(0)
        if audit is not None:
            audit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
