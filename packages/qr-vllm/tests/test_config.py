"""QRSamplerConfig, per-request resolution and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from qr_core import POPULATION_STD
from qr_vllm import (
    INFRASTRUCTURE_FIELDS,
    PER_REQUEST_FIELDS,
    ConfigValidationError,
    QRSamplerConfig,
    config_hash,
    resolve_config,
)
from qr_vllm._config import request_overrides


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No QR_* from the developer's shell or a stray .env may leak into these tests.
    import os

    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_follow_the_readme() -> None:
    config = QRSamplerConfig()
    assert config.population_std == POPULATION_STD  # the discrete σ, not 255/√12 = 73.612
    assert config.sample_count == 20480
    assert config.top_k == 50
    assert config.top_p == 0.9
    assert config.min_p == 0.0
    assert config.temperature_strategy == "fixed"
    assert config.signal_amplifier_type == "zscore_mean"
    assert config.log_level == "summary"
    assert config.records_path is None
    assert config.bypass is False


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("QR_TOP_K=7\nQR_SESSION=from-dotenv\n")
    monkeypatch.setenv("QR_TOP_P", "0.5")
    monkeypatch.setenv("QR_RECORDS_PATH", str(tmp_path / "r.jsonl"))
    config = QRSamplerConfig()
    assert config.top_k == 7
    assert config.session == "from-dotenv"
    assert config.top_p == 0.5
    assert config.records_path == tmp_path / "r.jsonl"


def test_override_builds_a_new_config_and_leaves_defaults_alone() -> None:
    defaults = QRSamplerConfig()
    before = defaults.model_dump()
    resolved = resolve_config(defaults, {"qr_top_k": 5, "qr_label": "x", "other_plugin": 1})
    assert resolved is not defaults
    assert resolved.top_k == 5
    assert resolved.label == "x"
    assert defaults.model_dump() == before


def test_no_override_returns_the_defaults() -> None:
    defaults = QRSamplerConfig()
    assert resolve_config(defaults, None) is defaults
    assert resolve_config(defaults, {"unrelated": "x"}) is defaults


def test_resolution_does_not_reread_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = QRSamplerConfig(top_p=0.8)
    monkeypatch.setenv("QR_TOP_P", "0.3")
    assert resolve_config(defaults, {"qr_top_k": 3}).top_p == 0.8


@pytest.mark.parametrize("field", sorted(INFRASTRUCTURE_FIELDS))
def test_infrastructure_fields_are_refused_per_request(field: str) -> None:
    with pytest.raises(ConfigValidationError, match=f"qr_{field}.*infrastructure"):
        resolve_config(QRSamplerConfig(), {f"qr_{field}": "x"})


@pytest.mark.parametrize(
    "field",
    [
        # qr-grpc's settings, including those added after this list was first written;
        # qr-vllm refuses them by prefix, without knowing qr-grpc's fields.
        "grpc_server_address",
        "grpc_tls",
        "grpc_tls_ca_file",
        "grpc_tls_cert_file",
        "grpc_tls_key_file",
        "grpc_tls_server_name",
        "grpc_max_message_bytes",
        "cb_window_size",
        "cb_max_consecutive_failures",
        "grpc_setting_of_a_later_version",
    ],
)
def test_transport_settings_are_refused_by_prefix(field: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        resolve_config(QRSamplerConfig(), {f"qr_{field}": "x"})
    message = str(info.value)
    assert f"'qr_{field}'" in message
    assert "infrastructure" in message
    assert f"environment variable QR_{field.upper()} on the server" in message


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigValidationError) as info:
        resolve_config(QRSamplerConfig(), {"qr_tempurature": 1.0})
    message = str(info.value)
    assert "qr_tempurature" in message
    for field in PER_REQUEST_FIELDS:
        assert f"qr_{field}" in message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("qr_top_p", 1.5, "less than or equal to 1"),
        ("qr_top_p", 0.0, "greater than 0"),
        ("qr_top_k", -2, "greater than or equal to -1"),
        ("qr_min_p", 1.0, "less than 1"),
        ("qr_sample_count", 0, "greater than or equal to 1"),
        ("qr_sample_count", 10**9, "less than or equal to"),
        ("qr_fixed_temperature", -0.1, "greater than or equal to 0"),
        ("qr_log_level", "loud", "'none', 'summary' or 'full'"),
        ("qr_bypass", "perhaps", "valid boolean"),
        ("qr_session", "x" * 300, "at most 256"),
        ("qr_top_k", "many", "valid integer"),
        ("qr_top_k", [1, 2], "single value"),
    ],
)
def test_bad_values_name_key_value_and_rule(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        resolve_config(QRSamplerConfig(), {key: value})
    message = str(info.value)
    assert key in message
    assert fragment in message
    if not isinstance(value, list):
        assert repr(value)[:50] in message


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigValidationError, match=r"edt_min_temp=3\.0 must not exceed"):
        resolve_config(QRSamplerConfig(), {"qr_edt_min_temp": 3.0})
    small = QRSamplerConfig(max_request_bytes=1000, sample_count=100)
    with pytest.raises(ConfigValidationError, match="sample_count=2000 exceeds"):
        resolve_config(small, {"qr_sample_count": 2000})


def test_bad_server_setting_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_TOP_P", "2")
    with pytest.raises(ValueError, match="top_p"):
        QRSamplerConfig()


def test_request_overrides_ignores_non_string_and_foreign_keys() -> None:
    assert request_overrides({1: "x", "vllm_thing": 2, "qr_top_k": 3}) == {"top_k": 3}  # type: ignore[dict-item]
    assert request_overrides(None) == {}


def test_config_hash_tracks_sampling_fields_only() -> None:
    base = QRSamplerConfig()
    tagged = resolve_config(base, {"qr_session": "s", "qr_label": "l", "qr_log_level": "full"})
    changed = resolve_config(base, {"qr_top_k": 3})
    assert config_hash(base) == config_hash(tagged)
    assert config_hash(base) != config_hash(changed)
    assert len(config_hash(base)) == 16
