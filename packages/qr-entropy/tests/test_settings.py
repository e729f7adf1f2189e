"""EntropySettings: QR_ environment variables, .env files, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from qr_entropy import EntropySettings
from qr_entropy._settings import DEFAULT_MAX_REQUEST_BYTES


def test_defaults() -> None:
    settings = EntropySettings()
    assert settings.entropy_source_type == "system"
    assert settings.fallback_mode == "system"
    assert settings.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert settings.mock_seed is None
    assert settings.mock_mean_shift == 0.0
    assert settings.health_false_alarm_rate == 2.0**-40


def test_every_field_has_a_description() -> None:
    for name, field in EntropySettings.model_fields.items():
        assert field.description, name


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_ENTROPY_SOURCE_TYPE", " mock_uniform ")
    monkeypatch.setenv("QR_FALLBACK_MODE", "error")
    monkeypatch.setenv("QR_MAX_REQUEST_BYTES", "4096")
    monkeypatch.setenv("QR_MOCK_SEED", "3")
    monkeypatch.setenv("QR_MOCK_MEAN_SHIFT", "0.25")
    monkeypatch.setenv("QR_GRPC_SERVER_ADDRESS", "localhost:1")  # another package's key
    settings = EntropySettings()
    assert settings.entropy_source_type == "mock_uniform"
    assert settings.fallback_mode == "error"
    assert settings.max_request_bytes == 4096
    assert (settings.mock_seed, settings.mock_mean_shift) == (3, 0.25)


def test_dotenv_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "QR_FALLBACK_MODE=mock_uniform\nQR_MOCK_SEED=8\nQR_SAMPLE_COUNT=100\n", encoding="utf-8"
    )
    assert EntropySettings().fallback_mode == "mock_uniform"
    monkeypatch.setenv("QR_MOCK_SEED", "9")
    assert EntropySettings().mock_seed == 9  # environment beats .env
    assert EntropySettings(mock_seed=10).mock_seed == 10  # keyword beats both


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fallback_mode", "quantum", "Input should be 'error', 'system' or 'mock_uniform'"),
        ("max_request_bytes", 0, "greater than or equal to 1"),
        ("max_request_bytes", 2**40, "less than or equal to 17179869184"),
        ("mock_mean_shift", 127.5, "less than 127.5"),
        ("mock_seed", -1, "greater than or equal to 0"),
        ("health_false_alarm_rate", 0.5, "less than or equal to 0.0625"),
        ("health_min_entropy_per_byte", 9, "less than or equal to 8"),
        ("timing_min_entropy_per_read", 0.1, "greater than or equal to 0.25"),
        ("entropy_source_type", "   ", "must name a source"),
    ],
)
def test_bad_values_name_field_value_and_bound(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        EntropySettings(**{field: value})
    text = str(info.value)
    assert field in text
    assert message in text


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_FALLBACK_MODE", "sometimes")
    with pytest.raises(ValueError, match="fallback_mode"):
        EntropySettings()
