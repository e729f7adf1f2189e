"""Prometheus for the monitoring tests: the binaries, and a real server on loopback.

Debian's ``prometheus`` package provides ``prometheus`` and ``promtool``. scripts/test
installs it; a test run without it installs it here the same way when it can (root,
or passwordless sudo). Only where apt itself is unavailable do the tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Prometheus", "prometheus_binaries", "running_prometheus"]


def prometheus_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing Debian's package if needed."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1]:
        return found[0], found[1]
    if shutil.which("apt-get") is None:
        pytest.skip("apt is unavailable here, so Debian's prometheus package cannot be installed")
    as_root: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        usable = sudo and subprocess.run([sudo, "-n", "true"], check=False).returncode == 0
        if not usable:
            pytest.fail(
                "prometheus/promtool are missing: install Debian's prometheus package "
                "(apt-get install --no-install-recommends prometheus), or run scripts/test as root"
            )
        as_root = ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
    ):
        subprocess.run([*as_root, *command], check=True, env=env, capture_output=True)
    found = shutil.which("prometheus"), shutil.which("promtool")
    prometheus, promtool = found
    assert prometheus, "the prometheus package did not provide prometheus"
    assert promtool, "the prometheus package did not provide promtool"
    return prometheus, promtool


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400 with a JSON body for a bad query
            return json.loads(error.read())

    def query(self, expr: str) -> Any:
        """The /api/v1/query answer (``status``, ``data`` or ``error``)."""
        return self.api("query", query=expr)

    def scalar(self, expr: str) -> float | None:
        """The single value of ``expr`` now, or None when it has no sample."""
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, scrape_configs: list[dict[str, Any]], rule_files: list[Path] | None = None
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping every second; stopped afterwards."""
    binary, _ = prometheus_binaries()
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_files or []],
        "scrape_configs": scrape_configs,
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError("prometheus exited: " + log.read_text()[-3000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(server.base + "/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start: " + log.read_text()[-3000:])
            time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
