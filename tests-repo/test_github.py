"""CI, release and pre-commit configuration refer to packages, scripts and versions that exist.

GitHub Actions cannot run here; these tests check what the workflows depend on:
the package list, the Python versions the packages declare, the scripts they
call, and that scripts/release-check refuses a tag that does not match the
package version (before it builds anything).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from repo_support import PACKAGES, REPO_ROOT, load_toml

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def _yaml(path: Path) -> dict[str, object]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _declared_pythons() -> set[str]:
    versions: set[str] = set()
    for package in PACKAGES:
        project = load_toml(REPO_ROOT / "packages" / package / "pyproject.toml")["project"]
        versions |= {
            c.rsplit(" :: ", 1)[1]
            for c in project["classifiers"]
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        }
    return versions


def test_ci_tests_every_package_on_every_declared_python() -> None:
    ci = _yaml(WORKFLOWS / "ci.yml")
    jobs = ci["jobs"]
    assert isinstance(jobs, dict)
    matrix = jobs["package"]["strategy"]["matrix"]
    assert set(matrix["package"]) == set(PACKAGES)
    assert set(matrix["python"]) == _declared_pythons()
    assert {"lint", "package", "lowest", "vllm-cpu"} <= set(jobs)
    steps = "\n".join(str(s.get("run", "")) for s in jobs["vllm-cpu"]["steps"])
    assert "./scripts/test" in steps


def test_release_tags_cover_every_package() -> None:
    release = _yaml(WORKFLOWS / "release.yml")
    # PyYAML reads the key `on` as True.
    trigger = release.get("on") or release.get(True)
    assert isinstance(trigger, dict)
    assert set(trigger["push"]["tags"]) == {f"{p}-v*" for p in PACKAGES}
    steps = "\n".join(str(s.get("run", "")) for s in release["jobs"]["check"]["steps"])
    assert "scripts/release-check" in steps


@pytest.mark.parametrize(
    "path",
    [
        ".github/dependabot.yml",
        ".pre-commit-config.yaml",
        *[str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / ".github").rglob("*.yml")],
    ],
)
def test_yaml_files_parse(path: str) -> None:
    assert _yaml(REPO_ROOT / path)


def test_scripts_called_by_workflows_exist() -> None:
    text = "\n".join(p.read_text() for p in WORKFLOWS.glob("*.yml"))
    # The pre-commit file patterns are regular expressions: read an escaped dot as a dot.
    text += (REPO_ROOT / ".pre-commit-config.yaml").read_text().replace("\\.", ".")
    for script in set(re.findall(r"scripts/[\w-]+(?:\.py)?", text)):
        path = REPO_ROOT / script
        assert path.is_file(), f"{script} is called but does not exist"


@pytest.mark.parametrize("package", PACKAGES)
def test_release_check_refuses_a_wrong_tag(package: str) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "release-check"), package, "--tag", f"{package}-v99.0.0"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert "does not match the package version" in result.stderr


def test_release_check_refuses_an_unknown_package() -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "release-check"), "qr-nothing"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "allowed: qr-core qr-entropy qr-grpc qr-vllm qr-lab" in result.stderr
