"""Address parsing: host:port, [v6]:port, unix:///path and clear errors.

See ARCHITECTURE.md, design note "Addresses".
"""

from __future__ import annotations

import pytest
from qr_entropy import EntropyConfigError
from qr_grpc import GrpcAddress, GrpcConfigError, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "target"),
    [
        ("localhost:50051", GrpcAddress("tcp", "localhost", 50051), "localhost:50051"),
        ("127.0.0.1:1", GrpcAddress("tcp", "127.0.0.1", 1), "127.0.0.1:1"),
        ("[::1]:50051", GrpcAddress("tcp", "::1", 50051), "[::1]:50051"),
        (" qrng.lab:65535 ", GrpcAddress("tcp", "qrng.lab", 65535), "qrng.lab:65535"),
        ("unix:///tmp/q.sock", GrpcAddress("unix", path="/tmp/q.sock"), "unix:///tmp/q.sock"),
        ("unix:/tmp/q.sock", GrpcAddress("unix", path="/tmp/q.sock"), "unix:///tmp/q.sock"),
    ],
)
def test_valid_addresses(text: str, expected: GrpcAddress, target: str) -> None:
    parsed = parse_address(text)
    assert parsed == expected
    assert parsed.target == target == str(parsed)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("localhost", "malformed"),
        ("::1:50051", "malformed"),
        ("[::1]50051", "malformed"),
        ("[nothost]:1", "not an IPv6 address"),
        ("host:http", "not a number"),
        ("host:0", "outside 1..65535"),
        ("host:70000", "outside 1..65535"),
        ("unix://relative.sock", "absolute path"),
        ("unix:", "absolute path"),
        ("http://host:1/x", "malformed"),
    ],
)
def test_bad_addresses_name_the_value(text: str, fragment: str) -> None:
    with pytest.raises(GrpcConfigError, match=fragment) as info:
        parse_address(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, EntropyConfigError)  # callers catching qr_entropy's error


def test_port_zero_is_for_servers_only() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True).port == 0
    assert parse_address("127.0.0.1:0", allow_port_zero=True).with_port(7).target == ("127.0.0.1:7")
