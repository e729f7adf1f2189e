"""The README's configuration reference is generated from the settings models and is fresh.

`scripts/gen_config_docs.py` writes the tables between the config-table markers
from the pydantic-settings models (`EntropySettings`, `GrpcSettings`,
`QRSamplerConfig`). These tests fail when README.md was not regenerated after
a setting changed, and when any document names a `QR_*` variable that no
package reads.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from repo_support import REPO_ROOT

GENERATOR = REPO_ROOT / "scripts" / "gen_config_docs.py"
README = REPO_ROOT / "README.md"
# Variables that are not settings models' fields but are read by name elsewhere.
OTHER_QR_VARIABLES = {
    "QR_SERVER_API_KEY",  # qr-entropy-server --api-key-env default
    "QR_SERVER_ADDRESS",  # examples/systemd/qr-entropy-server.env, used by the unit
    "QR_SERVER_SOURCE",
    "QR_SERVER_DEVICE_ID",
    "QR_ALLOW_UNSUPPORTED_VLLM",  # qr_vllm._compat: start on an untested vLLM
    "QR_COMPILE",  # qr_core._compiled: the compiled fast path (auto, on, off)
    "QR_VLLM_VENV",  # scripts/vllm-env
    "QR_VLLM_DIST",
    "QR_VLLM_VERSION",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )


def test_readme_tables_are_fresh() -> None:
    """`gen_config_docs.py --check` passes: README.md holds exactly what the models say."""
    result = _run("--check")
    assert result.returncode == 0, result.stderr + "\nrun: python scripts/gen_config_docs.py"


def test_stale_tables_are_detected(tmp_path: Path) -> None:
    """The check fails on a README whose table differs from the models (so the test can fail)."""
    stale = tmp_path / "README.md"
    text = README.read_text(encoding="utf-8")
    assert "`QR_SAMPLE_COUNT` | `qr_sample_count` | `20480`" in text
    stale.write_text(
        text.replace(
            "| `QR_SAMPLE_COUNT` | `qr_sample_count` | `20480`",
            "| `QR_SAMPLE_COUNT` | `qr_sample_count` | `4096`",
        )
    )
    result = _run("--check", "--readme", str(stale))
    assert result.returncode == 1
    assert "stale" in result.stderr
    # Regenerating repairs it.
    assert _run("--readme", str(stale)).returncode == 0
    assert stale.read_text(encoding="utf-8") == text


def _all_settings_variables() -> set[str]:
    from qr_entropy import EntropySettings
    from qr_grpc import GrpcSettings
    from qr_vllm import QRSamplerConfig

    names = set()
    for model in (EntropySettings, GrpcSettings, QRSamplerConfig):
        prefix = str(model.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in model.model_fields}
    return names


def test_every_documented_setting_exists() -> None:
    """Each QR_* name in the docs and deployment files is a real setting (or a known variable)."""
    known = _all_settings_variables() | OTHER_QR_VARIABLES
    documents = [
        README,
        REPO_ROOT / "CONTRIBUTING.md",
        REPO_ROOT / "ARCHITECTURE.md",
        *sorted((REPO_ROOT / "packages").glob("*/README.md")),
        *sorted((REPO_ROOT / "deployments").rglob("*.md")),
        *sorted((REPO_ROOT / "deployments").rglob("docker-compose.yml")),
        *sorted((REPO_ROOT / "deployments").rglob(".env.example")),
        *sorted((REPO_ROOT / "examples").rglob("*")),
    ]
    unknown: dict[str, set[str]] = {}
    for path in documents:
        if not path.is_file():
            continue
        for name in re.findall(r"\bQR_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")):
            if name not in known and not name.endswith("_"):
                unknown.setdefault(str(path.relative_to(REPO_ROOT)), set()).add(name)
    assert not unknown, f"QR_* names that no package reads: {unknown}"


def test_per_request_keys_in_readme_exist() -> None:
    """Each qr_* key the README sends in vllm_xargs is a per-request field."""
    from qr_vllm import PER_REQUEST_FIELDS

    text = README.read_text(encoding="utf-8")
    used = set(re.findall(r'"qr_([a-z_]+)"', text))
    assert used, "the README shows no vllm_xargs keys?"
    assert used <= set(PER_REQUEST_FIELDS), sorted(used - set(PER_REQUEST_FIELDS))
