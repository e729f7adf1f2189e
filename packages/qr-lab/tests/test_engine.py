"""End to end on a real engine: ``qr-lab run --embedded``, resume after SIGKILL, report in Chromium.

These start vLLM's OpenAI server on qr-vllm's tiny model (vLLM environment;
run them one engine at a time: ``flock /tmp/vllm-engine.lock ...``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from _browser import chromium, image_states, screenshot
from _simulate import study_file

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ENGINE_TIMEOUT_S = 1500


def _qr_lab(*args: str, timeout: float = ENGINE_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qr_lab.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _registered(tmp: Path) -> Path:
    pytest.importorskip("vllm")
    path = study_file(tmp)
    assert _qr_lab("register", str(path)).returncode == 0
    return path


def _log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]


def _records(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Per engine records file (relative name), its records."""
    return {
        f"records/{f.name}": [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        for f in sorted((run / "records").glob("engine-*.jsonl"))
    }


def _check_every_trial_exactly_once(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    planned = [t["trial_id"] for t in manifest["trials"]]
    log = _log(run)
    assert sorted(e["trial_id"] for e in log) == sorted(planned)  # each once, none lost
    files = _records(run)
    for entry in log:
        assert entry["status"] == "ok", entry
        assert entry["completion_tokens"] == 16
        mine = [r for r in files[entry["records_file"]] if r["session"] == entry["trial_id"]]
        requests: dict[int, list[int]] = defaultdict(list)
        for r in mine:
            requests[r["request_serial"]].append(r["sequence_number"])
        # The finished attempt is the trial's last request in that engine: 16 tokens, 0..15.
        last = max(requests)
        assert sorted(set(requests[last])) == list(range(16))
        assert {r["label"] for r in mine} == {entry["code"]}
    for name, rows in files.items():
        {e["trial_id"] for e in log if e["records_file"] == name}
        # A trial finished by another engine left at most a cut-short attempt here.
        for r in rows:
            assert r["session"] in planned


def test_run_embedded_analyze_report_in_chromium(tmp_path: Path) -> None:
    study = _registered(tmp_path)
    run = tmp_path / "run"
    done = _qr_lab("run", str(study), "--embedded", "--run-dir", str(run), "--no-progress")
    assert done.returncode == 0, done.stderr[-5000:]
    assert "20/20 trials finished" in done.stderr
    _check_every_trial_exactly_once(run)
    assert len(_records(run)) == 1

    analyzed = _qr_lab("analyze", str(run), "--json", timeout=600)
    assert analyzed.returncode == 0, analyzed.stderr
    result = json.loads(analyzed.stdout)
    for cond in ("intention", "control"):
        c = result["conditions"][cond]
        assert c["tokens"] == 160
        assert c["trials"] == 10
        assert all(s["excluded"] == 0 for s in c["exclusions"])
    assert result["primary"]["statistic"] == "stouffer_z"
    assert result["calibration"]["studies"] == 400
    assert (
        result["run"]["registration"]["hash"]
        == json.loads((study.parent / "study.toml.registration.json").read_text())["registrations"][
            -1
        ]["hash"]
    )

    reported = _qr_lab("report", str(run), timeout=600)
    assert reported.returncode == 0, reported.stderr
    report = run / "report.html"
    text = report.read_text()
    assert result["run"]["registration"]["hash"] in text
    assert "http://" not in text
    assert "https://" not in text
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium here (scripts/test installs it with apt-get as root or by sudo)")
    images = image_states(binary, report, tmp_path)
    assert [i["id"] for i in images] == [
        "plot-cumulative", "plot-u", "plot-z", "plot-position", "plot-health", "plot-latency",
    ]  # fmt: skip
    for image in images:
        assert image["complete"], image
        assert image["width"] > 0, image
        assert image["height"] > 0, image
        assert image["src"].startswith("data:image/png")
    shots = Path(os.environ.get("QR_LAB_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    screenshot(binary, report, shots / "qr-lab-report.png", tmp_path)
    assert (shots / "qr-lab-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _engine_pids(records: Path) -> list[int]:
    """Processes whose environment names this records file: the engine and its children."""
    needle = f"QR_RECORDS_PATH={records}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_run_killed_partway_resumes_with_every_trial_exactly_once(tmp_path: Path) -> None:
    study = _registered(tmp_path)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "qr_lab.cli", "run", str(study), "--embedded",
               "--run-dir", str(run), "--no-progress", "--concurrency", "2"]  # fmt: skip
    log_file = tmp_path / "first.log"
    with open(log_file, "wb") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ENGINE_TIMEOUT_S
    trials = run / "trials.jsonl"
    while not (trials.exists() and trials.read_bytes().count(b"\n") >= 4):
        assert first.poll() is None, log_file.read_text()[-5000:]
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = len(_log(run))
    assert 4 <= killed_at < 20, "the run finished before it could be killed"
    # The engine goes with the killed run: nothing that writes its records survives.
    records = (run / "records" / "engine-001.jsonl").resolve()
    deadline = time.monotonic() + 120
    while _engine_pids(records):
        assert time.monotonic() < deadline, f"engine processes left: {_engine_pids(records)}"
        time.sleep(0.5)

    resumed = _qr_lab("run", str(study), "--embedded", "--run-dir", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert f"({20 - killed_at} now" in resumed.stderr
    _check_every_trial_exactly_once(run)
    log = _log(run)
    assert {e["records_file"] for e in log} == {"records/engine-001.jsonl",
                                               "records/engine-002.jsonl"}  # fmt: skip
    assert sum(e["records_file"] == "records/engine-001.jsonl" for e in log) == killed_at

    # The analysis sees every trial once: 10 x 16 tokens per condition; the records of
    # attempts cut short by the kill are counted and excluded.
    analyzed = _qr_lab("analyze", str(run), "--json", "--no-calibration", timeout=600)
    assert analyzed.returncode == 0, analyzed.stderr
    result = json.loads(analyzed.stdout)
    cut_short = 0
    for entry_file, rows in _records(run).items():
        done_here = {e["trial_id"] for e in log if e["records_file"] == entry_file}
        cut_short += sum(1 for r in rows if r["session"] not in done_here)
    excluded = 0
    for cond in ("intention", "control"):
        c = result["conditions"][cond]
        assert c["tokens"] == 160
        assert c["trials"] == 10
        excluded += c["exclusions"][1]["excluded"]
        assert c["exclusions"][1]["step"] == "other_attempts"
    assert excluded == cut_short
