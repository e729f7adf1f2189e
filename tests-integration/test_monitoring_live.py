"""A real Prometheus scrapes a real vLLM OpenAI server with the plugin and a real entropy server.

Everything is a real process on loopback: ``qr-entropy-server`` (os.urandom over gRPC on a
Unix socket, metrics on a port), vLLM's OpenAI server (engine core in its own process, the
default: the plugin's metrics are served from there), and Debian's Prometheus scraping
all three every second with the repository's alert rules loaded. The test reads the
numbers back through Prometheus's HTTP query API and compares them with the records file,
per named source (the engine's own, ``default``, on the entropy server, and ``control`` on
os.urandom in the engine), then kills the entropy server (SIGKILL) in the middle of a request.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from prom_support import Prometheus, prometheus_binaries, running_prometheus
from test_monitoring_rules import MONITORING, dashboard_queries

pytestmark = pytest.mark.vllm


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout_s: float = 180.0,
    state: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            seen = f" (last seen: {state()})" if state is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")
        time.sleep(0.5)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


def total(prom: Prometheus, expr: str) -> float:
    value = prom.scalar(f"sum({expr})")
    return -1.0 if value is None else value


def test_prometheus_counts_match_the_records_before_and_after_the_server_dies(
    tiny_model: Path, tmp_path: Path
) -> None:
    prometheus_binaries()  # before anything starts: skip (no apt) or install
    short = Path(tempfile.mkdtemp(prefix="qrmon-"))  # Unix socket paths are short
    socket_path = short / "entropy.sock"
    records_path = tmp_path / "records.jsonl"
    server_metrics, plugin_metrics, vllm_port = free_port(), free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("QR_")}
    base_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the default: engine core apart
    try:
        server_cmd = [
            sys.executable, "-m", "qr_grpc.server", "--address", f"unix://{socket_path}",
            "--source", "system", "--metrics-port", str(server_metrics),
        ]  # fmt: skip
        vllm_cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(tiny_model), "--host", "127.0.0.1", "--port", str(vllm_port),
            "--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
        ]  # fmt: skip
        vllm_env = {
            **base_env,
            "QR_ENTROPY_SOURCE_TYPE": "quantum_grpc",
            "QR_GRPC_SERVER_ADDRESS": f"unix://{socket_path}",
            "QR_FALLBACK_MODE": "system",
            "QR_SAMPLE_COUNT": "1024",
            "QR_RECORDS_PATH": str(records_path),
            "QR_METRICS_PORT": str(plugin_metrics),
            "QR_SOURCES": json.dumps({"control": {"entropy_source_type": "system"}}),
            # A loaded test machine must not turn a healthy server into fallbacks.
            "QR_GRPC_TIMEOUT_MS": "20000",
            "QR_LOG_LEVEL": "none",
        }
        scrape = [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in (
                ("qr-sampler", plugin_metrics),
                ("qr-entropy-server", server_metrics),
                ("vllm", vllm_port),
            )
        ]
        shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
        with (
            process(server_cmd, base_env, tmp_path / "server.log") as server,
            process(vllm_cmd, vllm_env, tmp_path / "vllm.log") as vllm,
            running_prometheus(tmp_path, scrape, [tmp_path / "alerts.yml"]) as prom,
        ):
            base = f"http://127.0.0.1:{vllm_port}"

            def vllm_ready() -> bool:
                if vllm.poll() is not None:
                    raise AssertionError((tmp_path / "vllm.log").read_text()[-3000:])
                return http_ok(base + "/health")

            wait_for("the vLLM server", vllm_ready, 300)
            with urllib.request.urlopen(base + "/v1/models", timeout=30) as response:
                model = json.loads(response.read())["data"][0]["id"]
            for job in ("qr-sampler", "qr-entropy-server", "vllm"):
                wait_for(f"{job} up", lambda job=job: prom.scalar(f'up{{job="{job}"}}') == 1.0)

            def complete(max_tokens: int, qr_source: str = "default") -> None:
                body = {"model": model, "prompt": "The nature of randomness is",
                        "max_tokens": max_tokens, "ignore_eos": True,
                        "vllm_xargs": {"qr_source": qr_source}}  # fmt: skip
                post(base, "/v1/completions", body)

            def arm(qr_source: str) -> str:
                source = "quantum_grpc" if qr_source == "default" else "system"
                return f'qr_source="{qr_source}",source="{source}"'

            def of(rows: list[dict[str, Any]], qr_source: str) -> list[dict[str, Any]]:
                return [r for r in rows if r["qr_source"] == qr_source]

            # --- healthy: every token counted once, as its record ------------------------
            for _ in range(2):
                complete(12)
            complete(12, "control")

            def settled(expected_fallback: int | None = None) -> Callable[[], bool]:
                def check() -> bool:
                    rows = records(records_path)
                    fallback = sum(r["is_fallback"] for r in rows)
                    return (
                        len(rows) > 0
                        and total(prom, "qr_sampler_tokens_total") == len(rows)
                        and total(prom, "qr_sampler_records_written_total") == len(rows)
                        and total(prom, "qr_sampler_fallback_tokens_total") == fallback
                        and (expected_fallback is None or fallback >= expected_fallback)
                    )

                return check

            wait_for("Prometheus to see every record", settled())
            healthy = records(records_path)
            assert len(healthy) >= 36
            ok_direct = [r for r in healthy if r["status"] == "ok" and not r["is_fallback"]]
            # Each named source's series count its own records, under its own labels.
            for name in ("default", "control"):
                mine = of(healthy, name)
                assert len(mine) >= 12
                assert total(prom, f"qr_sampler_tokens_total{{{arm(name)}}}") == len(mine)
                drift = f'qr_sampler_drift_tokens{{{arm(name)},window="lifetime"}}'
                assert total(prom, drift) == len(of(ok_direct, name))
                fetches = f"qr_sampler_entropy_fetch_seconds_count{{{arm(name)}}}"
                assert total(prom, fetches) > 0
            # The control arm's bytes come from os.urandom in the engine, never the server.
            assert {r["entropy_source"] for r in of(healthy, "control")} == {"system"}
            default_bytes = f"qr_sampler_entropy_bytes_total{{{arm('default')}}}"
            if len(of(ok_direct, "default")) == len(of(healthy, "default")):
                # Every byte the plugin counted for the default source was served, and
                # counted, by the server. The server also answered the engine's start-up
                # check: one 1-byte request.
                wait_for(
                    "server bytes",
                    lambda: (
                        total(prom, "qr_entropy_server_bytes_served_total")
                        == total(prom, default_bytes) + 1
                    ),
                    60,
                    lambda: {
                        "server": total(prom, "qr_entropy_server_bytes_served_total"),
                        "plugin": total(prom, default_bytes),
                        "records": len(records(records_path)),
                    },
                )
            # Each row is 1,024 S bytes and randomized_pit's 7 V bytes.
            ok = [r for r in healthy if r["status"] == "ok"]
            for name in ("default", "control"):
                nbytes = total(prom, f"qr_sampler_entropy_bytes_total{{{arm(name)}}}")
                assert nbytes == (1024 + 7) * len(of(ok, name))
            assert total(prom, 'qr_sampler_drift_tokens{window="lifetime"}') == len(ok_direct)
            assert total(prom, "qr_sampler_health_test_failures_total") == 0
            closed = f'qr_sampler_breaker_state{{{arm("default")},state="closed"}}'
            assert prom.scalar(closed) == 1.0
            # The step time is per step, whatever its sources: one series, no source labels.
            step_series = prom.query("qr_sampler_step_seconds_count")["data"]["result"]
            assert len(step_series) == 1
            assert not {"source", "qr_source"} & set(step_series[0]["metric"])
            assert total(prom, "qr_sampler_step_seconds_count") > 0

            # --- the entropy server dies in the middle of a request ------------------------
            before = len(healthy)
            worker = threading.Thread(target=complete, args=(48,))
            worker.start()
            wait_for("the request to start", lambda: len(records(records_path)) >= before + 4, 120)
            server.send_signal(signal.SIGKILL)
            server.wait(30)
            worker.join(300)
            assert not worker.is_alive()
            complete(12)  # entirely after the server's death
            complete(12, "control")  # the control arm does not need the server
            wait_for("Prometheus to see the fallback records", settled(expected_fallback=12))
            after = records(records_path)
            flagged = sum(r["is_fallback"] for r in after)
            assert flagged >= 12
            assert flagged == sum(r["is_fallback"] for r in of(after, "default"))
            fallback = f"qr_sampler_fallback_tokens_total{{{arm('default')}}}"
            assert total(prom, fallback) == flagged
            control_fallback = f"qr_sampler_fallback_tokens_total{{{arm('control')}}}"
            assert total(prom, control_fallback) == 0
            for name in ("default", "control"):
                tokens = f"qr_sampler_tokens_total{{{arm(name)}}}"
                assert total(prom, tokens) == len(of(after, name))
            assert total(prom, "qr_sampler_tokens_total") == len(after)
            assert total(prom, "qr_sampler_records_dropped_total") == 0
            opened = f'qr_sampler_breaker_transitions_total{{{arm("default")},state="open"}}'
            assert total(prom, opened) >= 1
            # The rules are loaded and evaluated: the server-down alert is on its way.
            wait_for("up == 0", lambda: prom.scalar('up{job="qr-entropy-server"}') == 0.0, 60)
            wait_for(
                "the QREntropyServerDown alert",
                lambda: prom.scalar('count(ALERTS{alertname="QREntropyServerDown"})') == 1.0,
                60,
            )

            # --- every dashboard query runs against the live data ------------------------
            for where, expr in dashboard_queries():
                answer = prom.query(expr)
                assert answer["status"] == "success", f"{where}: {expr}: {answer}"
            assert prom.query("sum(rate(qr_sampler_tokens_total[1m")["status"] == "error"
    finally:
        shutil.rmtree(short, ignore_errors=True)
