"""The reference entropy server's public face: `serve`, `EntropyServer` and the console script.

Run ``qr-entropy-server --help`` (or ``python -m qr_grpc.server``) for the options. From
Python (tests, embedding), `serve` starts a server in this process and returns an
`EntropyServer` handle with ``stop()``. The work is split by job: `qr_grpc._serving`
binds and stops a server, `qr_grpc._servicer` answers its calls, `qr_grpc._server_cli`
parses the command line.
"""

from __future__ import annotations

import sys

from qr_grpc._server_cli import main
from qr_grpc._serving import (
    DEFAULT_MAX_BYTES_PER_REQUEST,
    SERVICE_NAME,
    EntropyServer,
    serve,
)

__all__ = ["DEFAULT_MAX_BYTES_PER_REQUEST", "SERVICE_NAME", "EntropyServer", "main", "serve"]

if __name__ == "__main__":
    sys.exit(main())
