"""Shared settings of the qr-vllm unit tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Warnings are errors in this repository, but torch and vLLM emit deprecation
    # warnings about their own internals at import (torch.jit, inductor); they are
    # not ours to fix and say nothing about qr-vllm.
    for line in (
        "ignore::DeprecationWarning:torch.*",
        "ignore::DeprecationWarning:vllm.*",
        "ignore::FutureWarning:torch.*",
        "ignore::FutureWarning:vllm.*",
        "ignore::UserWarning:torch.*",
    ):
        config.addinivalue_line("filterwarnings", line)
