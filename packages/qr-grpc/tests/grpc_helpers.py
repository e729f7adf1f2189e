"""Helpers shared by the qr-grpc tests (a uniquely named module: pytest puts every
package's tests directory on sys.path, so a generic name would collide)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from qr_entropy import EntropySource
from qr_grpc._proto.entropy_service_pb2 import EntropyRequest, EntropyResponse

ADDRESS_KINDS = ("tcp", "unix")
MODES = ("unary", "server_streaming", "bidi_streaming")


def address_for(kind: str, tmp: Path, name: str = "entropy.sock") -> str:
    """A bindable address of the given kind (TCP port 0 = any free port)."""
    if kind == "unix":
        return f"unix://{tmp / name}"
    return "127.0.0.1:0"


class KeyedSource(EntropySource):
    """Server-side test source: the bytes for a request of n are a fixed function of n.

    Not a source to use for anything else: it lets a test check that the bytes a client
    received answer the request it sent (concurrent bidi fetches, batching), while still
    looking random enough for the client's SP 800-90B health tests.
    """

    @property
    def name(self) -> str:
        return "keyed_test"

    def get_random_bytes(self, n: int) -> bytes:
        return expected_bytes(n)


def expected_bytes(n: int) -> bytes:
    """What `KeyedSource` returns for n."""
    return np.random.default_rng(n).bytes(n)


@dataclass
class ServerProcess:
    """A ``python -m qr_grpc.server`` child process and its bound address."""

    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


def wait_for_serving(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 30) -> str:
    """Wait for the server's ``event=serving`` log line and return its bound address."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if "event=serving" in line:
                return line.split("address=", 1)[1].split()[0]
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start in {timeout_s} s:\n{log_path.read_text()}")


def ipv6_loopback_available() -> bool:
    """Whether [::1] can be bound here (some containers have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def start_handler_server(
    address: str,
    service: str,
    *,
    unary: dict[str, Callable[..., Any]] | None = None,
    stream: dict[str, Callable[..., Any]] | None = None,
) -> grpc.Server:
    """A real gRPC server on ``address`` whose methods are the given test handlers.

    ``unary`` and ``stream`` map method names to unary-unary and stream-stream handlers
    taking and returning EntropyRequest / EntropyResponse. The caller stops the server.
    """
    codec = {
        "request_deserializer": EntropyRequest.FromString,
        "response_serializer": EntropyResponse.SerializeToString,
    }
    methods = {
        name: grpc.unary_unary_rpc_method_handler(fn, **codec) for name, fn in (unary or {}).items()
    }
    methods |= {
        name: grpc.stream_stream_rpc_method_handler(fn, **codec)
        for name, fn in (stream or {}).items()
    }
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    server.add_insecure_port(address)
    server.start()
    return server


def fetch_in_background(client: EntropySource, n: int) -> Future[bytes]:
    """``client.get_random_bytes(n)`` on a thread of its own; the future holds bytes or error."""
    future: Future[bytes] = Future()

    def run() -> None:
        try:
            future.set_result(client.get_random_bytes(n))
        except BaseException as error:  # the test inspects whatever the fetch raised
            future.set_exception(error)

    threading.Thread(target=run, name="test-fetch", daemon=True).start()
    return future
