"""Template: put your QRNG hardware behind the qr_entropy gRPC protocol.

Copy this file, fill in the three TODO sections of `QRNGHardware`, and run it. Everything
else is done: the unary RPC (client mode ``unary``), the streaming RPC (client modes
``server_streaming`` and ``bidi_streaming``), request validation, an optional API key,
optional TLS, the standard gRPC health service, structured logs and graceful shutdown.

As shipped, the TODO sections fall back to ``os.urandom`` (and say so in the log) so the
template runs as is. Needs only ``pip install qr-grpc`` (grpcio, grpcio-health-checking).

    python qrng_template_server.py --address localhost:50051
    python qrng_template_server.py --address unix:///run/qrng.sock --device /dev/qrng0
    QRNG_API_KEY=secret python qrng_template_server.py --tls-cert s.pem --tls-key s.key

Client side: ``QR_ENTROPY_SOURCE_TYPE=quantum_grpc``, ``QR_GRPC_SERVER_ADDRESS=<address>``,
``QR_GRPC_MODE=bidi_streaming`` for the lowest latency, ``QR_GRPC_API_KEY=secret``.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from qr_grpc import entropy_service_pb2 as pb2
from qr_grpc import entropy_service_pb2_grpc as pb2_grpc

log = logging.getLogger("qrng_server")


class QRNGHardware:
    """Your device. Only these three methods need changing."""

    def __init__(self, device_path: str) -> None:
        self.device_path = device_path
        # TODO(hardware) 1/3: open the device (serial port, USB handle, PCIe driver...).
        #   e.g. self._device = open(device_path, "rb", buffering=0)
        self._device = None
        log.warning(
            "event=placeholder_hardware detail=%s",
            "QRNGHardware is the template's os.urandom placeholder; fill in the TODOs",
        )

    @property
    def device_id(self) -> str:
        # TODO(hardware) 2/3 (optional): report the serial number of your device.
        return f"template:{self.device_path}"

    def generate(self, n_bytes: int) -> bytes:
        """Return exactly n_bytes measured NOW.

        Just in time: the measurement must happen during this call, after the client
        asked. No pools, no buffers filled in advance, no caching.
        """
        # TODO(hardware) 3/3: read n_bytes fresh bytes from the device.
        #   e.g. return self._device.read(n_bytes)
        return os.urandom(n_bytes)

    def close(self) -> None:
        # (Part of 1/3) release the device.
        if self._device is not None:
            self._device.close()


class EntropyService(pb2_grpc.EntropyServiceServicer):
    """GetEntropy and StreamEntropy over one device; one read at a time."""

    def __init__(self, hardware: QRNGHardware, max_bytes: int, api_key: str, header: str):
        self._hw = hardware
        self._max_bytes = max_bytes
        self._api_key = api_key.encode()
        self._header = header
        self._lock = threading.Lock()  # most devices serve one read at a time

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if not self._api_key:
            return
        sent = dict(context.invocation_metadata()).get(self._header, "")
        # Constant-time comparison; never log the key itself.
        if not hmac.compare_digest(str(sent).encode(), self._api_key):
            log.warning("event=rejected reason=api_key peer=%s", context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {self._header!r}")

    def _answer(self, request: pb2.EntropyRequest, context: grpc.ServicerContext):
        n = request.bytes_needed
        if not 0 < n <= self._max_bytes:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bytes_needed={n} is outside the allowed range 1..{self._max_bytes}",
            )
        try:
            with self._lock:
                data = self._hw.generate(n)
        except OSError as error:  # the device failed: the client falls back and flags it
            log.error("event=device_error error=%r", str(error))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"device error: {error}")
        if len(data) != n:  # never send a short read: the client treats it as a failure
            context.abort(grpc.StatusCode.INTERNAL, f"device returned {len(data)} of {n} bytes")
        return pb2.EntropyResponse(
            data=data,
            sequence_id=request.sequence_id,  # echo: streaming clients match on it
            generation_timestamp_ns=time.time_ns(),
            device_id=self._hw.device_id,
        )

    def GetEntropy(self, request, context):  # noqa: N802 -- the proto's method name
        self._authorize(context)
        return self._answer(request, context)

    def StreamEntropy(self, request_iterator, context):  # noqa: N802 -- the proto's name
        # One response per request, for as long as the client keeps the stream open.
        # The key is checked on the first request so a refusal does not race its write.
        for index, request in enumerate(request_iterator):
            if index == 0:
                self._authorize(context)
            yield self._answer(request, context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051", help="host:port or unix:///path")
    parser.add_argument("--device", default="/dev/qrng0", help="passed to QRNGHardware")
    parser.add_argument("--max-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--api-key-header", default="api-key")
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s %(message)s")

    hardware = QRNGHardware(args.device)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_send_message_length", args.max_bytes + 65536)],
    )
    api_key = os.environ.get("QRNG_API_KEY", "")  # from the environment, never argv
    service = EntropyService(hardware, args.max_bytes, api_key, args.api_key_header)
    pb2_grpc.add_EntropyServiceServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    if args.address.startswith("unix:"):
        # A server killed earlier leaves its socket file behind; grpc cannot bind over it.
        Path(args.address.removeprefix("unix:").removeprefix("//")).unlink(missing_ok=True)
    if args.tls_cert and args.tls_key:
        creds = grpc.ssl_server_credentials(
            [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())]
        )
        server.add_secure_port(args.address, creds)
    else:
        server.add_insecure_port(args.address)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "event=serving address=%s device=%s api_key=%s tls=%s",
        args.address,
        hardware.device_id,
        "required" if api_key else "none",
        bool(args.tls_cert),
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("event=shutdown grace_s=5")
    health_servicer.enter_graceful_shutdown()  # probes see NOT_SERVING while calls drain
    server.stop(5).wait()
    hardware.close()
    log.info("event=stopped")


if __name__ == "__main__":
    main()
