"""Shared fixtures of the qr-entropy tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from qr_entropy import EntropySourceRegistry


@pytest.fixture(autouse=True)
def _isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No QR_* variable or .env file of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Forget entry points scanned by earlier tests, before and after the test."""
    EntropySourceRegistry.refresh()
    yield
    EntropySourceRegistry.refresh()
