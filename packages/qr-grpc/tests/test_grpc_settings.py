"""GrpcSettings from the environment, and construction-time errors of the source."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pydantic
import pytest
from qr_entropy import EntropyConfigError, EntropySettings, EntropySourceRegistry
from qr_grpc import (
    DEFAULT_MAX_BYTES_PER_REQUEST,
    DEFAULT_METHOD_PATH,
    DEFAULT_STREAM_METHOD_PATH,
    GrpcConfigError,
    GrpcSettings,
    QuantumGrpcSource,
)


def test_defaults_match_the_readme_table() -> None:
    settings = GrpcSettings()
    assert settings.grpc_server_address == "localhost:50051"
    assert settings.grpc_timeout_ms == 1000
    assert settings.grpc_retry_count == 2
    assert settings.grpc_mode == "unary"
    assert settings.grpc_method_path == DEFAULT_METHOD_PATH
    assert settings.grpc_stream_method_path == DEFAULT_STREAM_METHOD_PATH
    assert settings.grpc_api_key.get_secret_value() == ""
    assert settings.grpc_api_key_header == "api-key"
    assert (settings.cb_window_size, settings.cb_recovery_window_s) == (100, 10.0)
    assert settings.cb_max_consecutive_failures == 3
    # The reference server's default limit, so a default client and server agree.
    assert settings.grpc_max_bytes_per_request == DEFAULT_MAX_BYTES_PER_REQUEST == 4 * 1024 * 1024
    for name, field in GrpcSettings.model_fields.items():
        assert field.description, name


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("QR_GRPC_MODE=bidi_streaming\nQR_CB_WINDOW_SIZE=7\n")
    monkeypatch.setenv("QR_GRPC_SERVER_ADDRESS", "unix:///tmp/x.sock")
    monkeypatch.setenv("QR_GRPC_API_KEY", "s3cret")
    settings = GrpcSettings()
    assert settings.grpc_mode == "bidi_streaming"
    assert settings.cb_window_size == 7
    assert settings.grpc_server_address == "unix:///tmp/x.sock"
    assert "s3cret" not in repr(settings)


def test_empty_tls_file_variables_mean_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`QR_GRPC_TLS_CA_FILE=` (as left in a .env template) is no file, not the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("QR_GRPC_TLS_CA_FILE=\nQR_GRPC_TLS_CERT_FILE=  \n")
    monkeypatch.setenv("QR_GRPC_TLS_KEY_FILE", "")
    settings = GrpcSettings()
    assert settings.grpc_tls_ca_file is None
    assert settings.grpc_tls_cert_file is None
    assert settings.grpc_tls_key_file is None


def test_unknown_mode_from_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QR_GRPC_MODE", "carrier_pigeon")
    with pytest.raises(GrpcConfigError, match="QR_GRPC_MODE='carrier_pigeon'") as info:
        QuantumGrpcSource.from_settings(EntropySettings())
    assert "unary" in str(info.value)
    assert "bidi_streaming" in str(info.value)
    with pytest.raises(pydantic.ValidationError, match="bidi_streaming"):
        GrpcSettings(grpc_mode="carrier_pigeon")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("grpc_method_path", "GetEntropy"),
        ("grpc_method_path", "/only.Service"),
        ("grpc_api_key_header", "Api-Key"),
        ("grpc_api_key_header", "key-bin"),
        ("grpc_timeout_ms", 0),
        ("grpc_retry_count", -1),
        ("cb_max_consecutive_failures", 0),
    ],
)
def test_bad_settings_are_rejected(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        GrpcSettings(**{field: value})  # type: ignore[arg-type]


def test_bad_address_is_an_error_at_construction() -> None:
    with pytest.raises(GrpcConfigError, match="'nohost'"):
        QuantumGrpcSource(GrpcSettings(grpc_server_address="nohost"))


def test_missing_tls_files_are_errors_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(GrpcConfigError, match=r"grpc_tls_ca_file=.*ca\.pem.*cannot be read"):
        QuantumGrpcSource(GrpcSettings(grpc_tls_ca_file=missing))
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(GrpcConfigError, match="must be set together"):
        QuantumGrpcSource(GrpcSettings(grpc_tls_cert_file=cert))


def test_streaming_mode_needs_a_stream_path() -> None:
    with pytest.raises(GrpcConfigError, match="grpc_stream_method_path"):
        QuantumGrpcSource(GrpcSettings(grpc_mode="bidi_streaming", grpc_stream_method_path=""))
    # Unary does not use it.
    QuantumGrpcSource(GrpcSettings(grpc_stream_method_path="")).close()


def test_construction_opens_nothing() -> None:
    before = threading.active_count()
    source = QuantumGrpcSource(GrpcSettings(grpc_server_address="127.0.0.1:9"))
    assert threading.active_count() == before
    source.close()
    assert not source.is_available


def test_from_settings_takes_explicit_fields_and_the_shared_guards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class WithGrpc(EntropySettings):
        grpc_mode: str = "unary"

    monkeypatch.setenv("QR_GRPC_TIMEOUT_MS", "1234")
    source = QuantumGrpcSource.from_settings(
        WithGrpc(grpc_mode="server_streaming", max_request_bytes=4096)
    )
    try:
        assert source.settings.grpc_mode == "server_streaming"
        assert source.settings.grpc_timeout_ms == 1234
        assert source.max_request_bytes == 4096
        with pytest.raises(EntropyConfigError, match="4096"):
            source.fetch_block(2, 4096)
    finally:
        source.close()


def test_registered_as_quantum_grpc_entry_point() -> None:
    EntropySourceRegistry.refresh()
    assert EntropySourceRegistry.get("quantum_grpc") is QuantumGrpcSource
    assert EntropySourceRegistry.available()["quantum_grpc"] == "qr-grpc"
    source = EntropySourceRegistry.build("quantum_grpc", EntropySettings())
    try:
        assert isinstance(source, QuantumGrpcSource)
        assert source.name == "quantum_grpc"
        assert source.health_tested
    finally:
        source.close()


def test_api_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = QuantumGrpcSource(
        GrpcSettings(grpc_server_address="127.0.0.1:9", grpc_api_key="top-secret-key")
    )
    source.close()
    assert "top-secret-key" not in caplog.text
    assert "top-secret-key" not in repr(source.settings)
