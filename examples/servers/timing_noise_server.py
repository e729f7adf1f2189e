"""An entropy server backed by CPU timing jitter (qr_entropy's experimental timing_noise).

Timing jitter is a physical noise source, but a weak and slow one: use it to try the
pipeline end to end on hardware without a QRNG, not for experiments that need quantum
randomness. The server is qr-grpc's own (`qr_grpc.serve`), so it has the standard health
service, size limits and structured logs; this script only picks the source.

Run:    python timing_noise_server.py --address unix:///tmp/timing.sock
Client: QR_ENTROPY_SOURCE_TYPE=quantum_grpc QR_GRPC_SERVER_ADDRESS=unix:///tmp/timing.sock
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from qr_entropy import EntropySettings, EntropySourceRegistry
from qr_grpc import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051", help="host:port or unix:///path")
    parser.add_argument(
        "--max-bytes-per-request",
        type=int,
        default=1024 * 1024,
        help="timing noise makes roughly tens of kB/s, so keep requests modest",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # QR_TIMING_* variables (or .env) tune the source, as for any qr_entropy user.
    source = EntropySourceRegistry.build("timing_noise", EntropySettings())
    server = serve(
        source,
        args.address,
        max_bytes_per_request=args.max_bytes_per_request,
        device_id="timing_noise",
        close_source=True,
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop(grace_s=5)


if __name__ == "__main__":
    main()
