"""``qr-lab run`` over HTTP against a stand-in for the engine (uv environment, no vLLM).

The real engine runs in test_engine.py (vLLM environment). Here a small HTTP
server on 127.0.0.1 answers the two OpenAI-compatible routes qr-lab uses and
appends records the way qr-vllm does, so the client side (concurrency, tags,
refusals, the trials log, collecting records) is tested where vLLM cannot run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _simulate import study_file
from qr_lab import analyze_run
from qr_lab.cli import main


class _Engine(ThreadingHTTPServer):
    records: Path
    refuse: str
    seen: list[dict[str, Any]]
    serial: int
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    server: _Engine

    def log_message(self, *args: object) -> None:
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": "stand-in"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        xargs = body["vllm_xargs"]
        with self.server.lock:
            self.server.seen.append(body)
            if xargs["qr_session"] == self.server.refuse:
                self._send(400, {"error": "unknown extra_args key"})
                return
            self.server.serial += 1
            serial = self.server.serial
            rng = np.random.default_rng(serial)
            with open(self.server.records, "a") as f:
                for seq in range(body["max_tokens"]):
                    z = float(rng.standard_normal())
                    f.write(json.dumps({
                        "request_serial": serial, "sequence_number": seq, "status": "ok",
                        "session": xargs["qr_session"], "label": xargs["qr_label"],
                        "u": float(rng.random()), "z_score": z, "is_fallback": False,
                        "health": "ok", "timestamp_ns": serial * 10**9 + seq,
                        "entropy_fetch_ms": 0.1, "token_prob": 0.5, "shannon_entropy": 1.0,
                    }) + "\n")  # fmt: skip
        self._send(200, {"choices": [{"text": " words", "finish_reason": "length"}],
                         "usage": {"completion_tokens": body["max_tokens"]}})  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[_Engine]:
    server = _Engine(("127.0.0.1", 0), _Handler)
    server.records = tmp_path / "engine-records.jsonl"
    # A record of another client of the same engine: never copied into the run.
    server.records.write_text(json.dumps({"session": "someone-else", "request_serial": 0}) + "\n")
    server.refuse = "T0003"
    server.seen = []
    server.serial = 0
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_run_sends_tagged_trials_and_collects_their_records(
    tmp_path: Path, engine: _Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_file(tmp_path)
    run = tmp_path / "run"
    endpoint = f"http://127.0.0.1:{engine.server_address[1]}/v1"
    assert main(["register", str(study)]) == 0
    common = ["run", str(study), "--run-dir", str(run), "--endpoint", endpoint,
              "--engine-records", str(engine.records), "--no-progress"]  # fmt: skip
    assert main([*common, "--max-trials", "5"]) == 0
    assert main(common) == 0  # resumes with the other 15
    err = capsys.readouterr().err
    assert "20/20 trials finished (15 now, 0 refused)" in err
    manifest = json.loads((run / "manifest.json").read_text())
    plan = {t["trial_id"]: t for t in manifest["trials"]}
    # Every trial sent once, tagged with its id and its condition's blinding code.
    assert sorted(b["vllm_xargs"]["qr_session"] for b in engine.seen) == sorted(plan)
    for body in engine.seen:
        trial = plan[body["vllm_xargs"]["qr_session"]]
        assert body["vllm_xargs"]["qr_label"] == trial["code"] in ("A", "B")
        assert manifest["blinding"][trial["code"]] == trial["condition"]
        assert body["vllm_xargs"]["qr_temperature_strategy"] == "fixed"
        assert body["max_tokens"] == 16
        assert body["ignore_eos"] is True
        assert body["model"] == "stand-in"
    log = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    assert len(log) == 20
    refused = [e for e in log if e["status"] == "failed"]
    assert [e["trial_id"] for e in refused] == ["T0003"]
    assert "HTTP 400" in refused[0]["error"]
    collected = (run / "records" / "collected.jsonl").read_text().splitlines()
    assert len(collected) == 19 * 16
    assert "someone-else" not in "".join(collected)
    result = analyze_run(run, calibration=False)
    assert result["run"]["failed_requests"] == 1
    refused_cond = plan["T0003"]["condition"]
    assert result["conditions"][refused_cond]["tokens"] == 9 * 16
    # Nothing left to send: running again sends nothing.
    assert main(common) == 0
    assert len(engine.seen) == 20


def test_an_unreachable_engine_fails_the_run_and_logs_no_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_file(tmp_path, {"concurrency = 4": "concurrency = 1"})
    assert main(["register", str(study)]) == 0
    code = main(["run", str(study), "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"])  # fmt: skip
    assert code == 1
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (tmp_path / "run" / "trials.jsonl").exists()
