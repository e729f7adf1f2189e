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


@pytest.fixture(autouse=True, scope="session")
def _inductor_cache_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """qr_core's compiled path (QR_COMPILE) keeps Inductor's cache here, not in /tmp."""
    import os

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
