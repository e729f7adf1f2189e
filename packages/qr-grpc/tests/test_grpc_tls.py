"""TLS and mutual TLS with a throwaway CA generated at test time (cryptography)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc_helpers import MODES, KeyedSource, address_for, expected_bytes
from qr_grpc import EntropyServer, GrpcConfigError, GrpcEntropyUnavailableError, QuantumGrpcSource

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

StartServer = Callable[..., EntropyServer]
MakeClient = Callable[..., QuantumGrpcSource]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    usage: x509.ObjectIdentifier,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("qr-grpc test CA")
    server, server_key = _leaf(ca, ca_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH)
    client, client_key = _leaf(ca, ca_key, "client", ExtendedKeyUsageOID.CLIENT_AUTH)
    other, _ = _ca("someone else's CA")
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=_write_cert(server, d / "server.pem"),
        server_key=_write_key(server_key, d / "server.key"),
        client_cert=_write_cert(client, d / "client.pem"),
        client_key=_write_key(client_key, d / "client.key"),
        other_ca=_write_cert(other, d / "other-ca.pem"),
    )


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("mode", MODES)
def test_tls_with_a_test_ca(
    kind: str,
    mode: str,
    *,
    pki: Pki,
    short_tmp: Path,
    start_server: StartServer,
    make_client: MakeClient,
) -> None:
    server = start_server(
        KeyedSource(),
        address_for(kind, short_tmp),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    client = make_client(server.address, grpc_mode=mode, grpc_tls_ca_file=pki.ca)
    assert client.get_random_bytes(500) == expected_bytes(500)
    status = client.health_check()
    assert status["tls"] is True
    assert status["server_status"] == "SERVING"


def test_tls_refuses_an_untrusted_server_and_plaintext(
    pki: Pki, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(
        KeyedSource(),
        address_for("tcp", short_tmp),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    untrusting = make_client(server.address, grpc_tls_ca_file=pki.other_ca, grpc_retry_count=0)
    with pytest.raises(GrpcEntropyUnavailableError, match="UNAVAILABLE"):
        untrusting.get_random_bytes(10)
    plaintext = make_client(server.address, grpc_retry_count=0)
    with pytest.raises(GrpcEntropyUnavailableError, match="UNAVAILABLE"):
        plaintext.get_random_bytes(10)


def test_tls_server_name_override(
    pki: Pki, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(
        KeyedSource(),
        address_for("tcp", short_tmp),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    port = server.address.port
    # The name checked is the override, not the address host; the override checks "localhost".
    client = make_client(
        f"127.0.0.1:{port}", grpc_tls_ca_file=pki.ca, grpc_tls_server_name="localhost"
    )
    assert client.get_random_bytes(10) == expected_bytes(10)


@pytest.mark.parametrize("mode", MODES)
def test_mutual_tls(
    mode: str, pki: Pki, short_tmp: Path, start_server: StartServer, make_client: MakeClient
) -> None:
    server = start_server(
        KeyedSource(),
        address_for("unix", short_tmp),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    )
    anonymous = make_client(server.address, grpc_mode=mode, grpc_tls_ca_file=pki.ca)
    with pytest.raises(GrpcEntropyUnavailableError):
        anonymous.get_random_bytes(10)
    client = make_client(
        server.address,
        grpc_mode=mode,
        grpc_tls_ca_file=pki.ca,
        grpc_tls_cert_file=pki.client_cert,
        grpc_tls_key_file=pki.client_key,
    )
    assert client.get_random_bytes(10) == expected_bytes(10)


def test_server_tls_option_errors(pki: Pki, short_tmp: Path, start_server: StartServer) -> None:
    source = KeyedSource()
    with pytest.raises(GrpcConfigError, match="together"):
        start_server(source, "127.0.0.1:0", tls_cert_file=pki.server_cert)
    with pytest.raises(GrpcConfigError, match="needs tls_cert_file"):
        start_server(source, "127.0.0.1:0", tls_client_ca_file=pki.ca)
    with pytest.raises(GrpcConfigError, match=r"tls_key_file=.* cannot be read"):
        start_server(
            source,
            "127.0.0.1:0",
            tls_cert_file=pki.server_cert,
            tls_key_file=short_tmp / "missing.key",
        )
