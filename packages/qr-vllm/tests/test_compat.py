"""The supported vLLM range and its check."""

from __future__ import annotations

import logging

import pytest
from qr_vllm import SUPPORTED_VLLM, UnsupportedVllmError, _compat, check_vllm_version


def test_range_is_one_minor_series() -> None:
    assert SUPPORTED_VLLM == ">=0.32,<0.33"


@pytest.mark.parametrize("found", ["0.32.0", "0.32.5", "0.32.0rc1", "0.32.1+cpu", "0.32"])
def test_inside_the_range(found: str) -> None:
    assert check_vllm_version(found) == found


@pytest.mark.parametrize("found", ["0.31.9", "0.33.0", "1.0.0", "0.9.2"])
def test_outside_the_range(found: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_compat.ALLOW_UNSUPPORTED_ENV, raising=False)
    with pytest.raises(
        UnsupportedVllmError, match=f"found vllm {found}.*QR_ALLOW_UNSUPPORTED_VLLM"
    ):
        check_vllm_version(found)


def test_override_logs_instead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(_compat.ALLOW_UNSUPPORTED_ENV, "1")
    with caplog.at_level(logging.WARNING):
        assert check_vllm_version("0.40.0") == "0.40.0"
    assert "found vllm 0.40.0" in caplog.text


def test_missing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "installed_vllm_version", lambda: None)
    with pytest.raises(UnsupportedVllmError, match="no vllm distribution is installed"):
        check_vllm_version()


@pytest.mark.vllm
def test_installed_version_is_found() -> None:
    found = _compat.installed_vllm_version()
    if found is None:
        pytest.skip("vLLM is not installed in this environment")
    assert check_vllm_version() == found
