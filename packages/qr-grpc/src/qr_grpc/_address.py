"""Parsing of gRPC server addresses: ``host:port``, ``[v6]:port`` and ``unix:///path``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from qr_grpc._errors import GrpcConfigError

__all__ = ["GrpcAddress", "parse_address"]

_ALLOWED = "'host:port', '[ipv6]:port' or 'unix:///absolute/path'"
_MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class GrpcAddress:
    """A parsed server address.

    Attributes:
        kind: ``"tcp"`` or ``"unix"``.
        host: Host name or IP literal (without brackets); empty for Unix sockets.
        port: TCP port; 0 for Unix sockets (or "pick a free port" on a server).
        path: Absolute socket path for Unix sockets; empty for TCP.
    """

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def target(self) -> str:
        """The address in the form grpc channels and servers accept."""
        if self.kind == "unix":
            return f"unix://{self.path}"
        if ":" in self.host:  # an IPv6 literal needs its brackets back
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def with_port(self, port: int) -> GrpcAddress:
        """Return the same TCP address with another port (used after binding port 0)."""
        return GrpcAddress(kind=self.kind, host=self.host, port=port, path=self.path)

    def __str__(self) -> str:
        return self.target


def parse_address(address: str, *, allow_port_zero: bool = False) -> GrpcAddress:
    """Parse and validate a server address.

    Args:
        address: ``host:port``, ``[ipv6]:port`` or ``unix:///absolute/path``.
        allow_port_zero: Accept port 0 (servers: bind any free port).

    Returns:
        The parsed address.

    Raises:
        GrpcConfigError: The address has none of the allowed forms; the message names it.
    """
    if not isinstance(address, str) or not address.strip():
        raise GrpcConfigError(f"grpc address {address!r} is empty; expected {_ALLOWED}")
    text = address.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/") or path.rstrip("/") == "":
            raise GrpcConfigError(
                f"grpc address {address!r}: a Unix socket needs an absolute path, "
                f"e.g. 'unix:///tmp/qrng.sock'; expected {_ALLOWED}"
            )
        return GrpcAddress(kind="unix", path=path)

    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise GrpcConfigError(f"grpc address {address!r} is malformed; expected {_ALLOWED}")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise GrpcConfigError(
                f"grpc address {address!r}: {host!r} is not an IPv6 address; expected {_ALLOWED}"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host or "/" in host:
            raise GrpcConfigError(
                f"grpc address {address!r} is malformed (IPv6 needs brackets, a port is "
                f"required); expected {_ALLOWED}"
            )
    if not port_text.isdigit():
        raise GrpcConfigError(
            f"grpc address {address!r}: port {port_text!r} is not a number; expected {_ALLOWED}"
        )
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= _MAX_PORT:
        raise GrpcConfigError(
            f"grpc address {address!r}: port {port} is outside {low}..{_MAX_PORT}"
        )
    return GrpcAddress(kind="tcp", host=host, port=port)
