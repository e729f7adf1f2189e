"""Run the reference entropy server (``qr-entropy-server`` from qr-grpc) as a child process.

qr_vllm never imports qr_grpc (the import contract): the demo, the tests and
the benchmark start the server through its console script, on a Unix socket in
a private temporary directory, and stop it when done.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EntropyServerProcess"]


class EntropyServerProcess:
    """The reference gRPC entropy server on a Unix socket, as a context manager.

    Args:
        source: The qr_entropy source the server reads from.
        max_bytes_per_request: Largest request it serves (a batch asks rows × n bytes).
        startup_timeout_s: How long to wait for the socket to appear.
        extra_args: More command-line arguments for ``qr-entropy-server``.
    """

    def __init__(
        self,
        source: str = "system",
        max_bytes_per_request: int = 64 * 1024 * 1024,
        startup_timeout_s: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.source = source
        self.max_bytes_per_request = max_bytes_per_request
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args
        self._dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def socket_path(self) -> Path:
        """The socket file (valid after `start`)."""
        if self._dir is None:
            raise RuntimeError("the entropy server is not started")
        return self._dir / "entropy.sock"

    @property
    def address(self) -> str:
        """The gRPC address for ``QR_GRPC_SERVER_ADDRESS``."""
        return f"unix://{self.socket_path}"

    def start(self) -> EntropyServerProcess:
        """Start the server and wait until its socket exists.

        Raises:
            RuntimeError: The server exited or did not listen in time (its log is quoted).
        """
        self._dir = Path(tempfile.mkdtemp(prefix="qr-entropy-"))
        self.log_path = self._dir / "server.log"
        command = [
            sys.executable,
            "-m",
            "qr_grpc.server",
            "--source",
            self.source,
            "--address",
            self.address,
            "--max-bytes-per-request",
            str(self.max_bytes_per_request),
            "--grace-s",
            "0.5",
            *self.extra_args,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"qr-entropy-server did not start: {log_text}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crashed entropy device)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)

    def environment(self, mode: str = "bidi_streaming") -> dict[str, str]:
        """Environment variables that point the processor at this server."""
        return {
            "QR_ENTROPY_SOURCE_TYPE": "quantum_grpc",
            "QR_GRPC_SERVER_ADDRESS": self.address,
            "QR_GRPC_MODE": mode,
        }

    def __enter__(self) -> EntropyServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
