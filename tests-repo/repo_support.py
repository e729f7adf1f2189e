"""Helpers shared by the repository-level tests (docs, deployments, wheels).

These tests look at the repository as a user sees it: the README's commands,
the deployment files and the built wheels. They run in the vLLM environment
(scripts/test) and need `uv` on PATH (or importable as `python -m uv`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qr-core", "qr-entropy", "qr-grpc", "qr-vllm", "qr-lab")


def uv_command() -> list[str]:
    """The command that runs uv here: `uv` on PATH, else `python -m uv` (this or python3).

    Fails the test (never skips it) when uv is missing: every set-up path of
    this repository installs it (scripts/test with `pip install uv` if needed),
    so its absence is a broken environment.
    """
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3")):
        if (
            python
            and subprocess.run(
                [python, "-m", "uv", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return [python, "-m", "uv"]
    pytest.fail("uv is needed by the repository tests: pip install 'uv>=0.9,<1'")


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file (tomllib on 3.11+, tomli before)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)
