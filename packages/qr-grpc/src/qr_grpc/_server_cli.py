"""The ``qr-entropy-server`` command line: parse options, serve, stop on SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence

from qr_entropy import EntropySettings, EntropySourceRegistry, QREntropyError

from qr_grpc._errors import GrpcConfigError
from qr_grpc._logfmt import LogFormat, configure_logging
from qr_grpc._server_metrics import ServerMetrics
from qr_grpc._serving import DEFAULT_MAX_BYTES_PER_REQUEST, serve

__all__ = ["main"]

# The server's events share one logger name, whichever module logs them.
logger = logging.getLogger("qr_grpc.server")


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
    parser.add_argument(
        "--delay-jitter-ms",
        type=float,
        default=0.0,
        help="test/diagnostic aid: add a random extra delay of up to this long to every "
        "response (simulates a jittery device)",
    )
    parser.add_argument("--max-workers", type=int, default=16, help="serving threads")
    parser.add_argument(
        "--grace-s", type=float, default=5.0, help="seconds running calls get on shutdown"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics "
        "(needs qr-grpc[metrics]; default 0: off)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics endpoint"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", choices=("logfmt", "json"), default="logfmt", help="log line format"
    )
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
    metrics = None
    if args.metrics_port:
        try:
            metrics = ServerMetrics(source)
            metrics.start_endpoint(args.metrics_host, args.metrics_port)
        except (ImportError, OSError, OverflowError) as error:
            source.close()
            hint = " (pip install 'qr-grpc[metrics]')" if isinstance(error, ImportError) else ""
            logger.error("event=startup_failed error=%r%s", f"metrics: {error}", hint)
            return 2
    try:
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
            delay_jitter_ms=args.delay_jitter_ms,
            max_workers=args.max_workers,
            close_source=True,
            metrics=metrics,
        )
    except GrpcConfigError as error:
        source.close()
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
    return 0
