"""Reliability of the plugin with real engines, a real gRPC server, real faults.

* Visible failure: the OpenAI server in ``QR_FALLBACK_MODE=error`` with
  ``QR_FAILURE_STOP_TOKEN_ID``; the entropy server is killed mid-stream. Every
  request (``ignore_eos`` or not, with or without stop tokens) ends at its failing
  step with ``finish_reason: stop`` and ``stop_reason`` equal to the failure
  token, and no record says ``token_id: -1`` (or null).
* Admission over HTTP: a 1 MB value gets a short 400 (and JSON ``true`` reaches the
  plugin as 1: vLLM's request schema converts it first); the plugin's log lines are
  in vLLM's format, ``qr_log_level=full`` included.
* Isolation: 8 concurrent requests at the largest allowed ``qr_sample_count``
  beside a normal one, through the reference server at its default 4 MiB limit:
  nothing fails, the normal request runs to its length.
* Bad disk: the records file on a full 64 KiB tmpfs; the engine keeps serving and
  every line parses. A directory or read-only records path, and a wrong API key
  in ``error`` mode, stop the engine's start with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess
from test_grpc_under_load import openai_server_with

pytestmark = pytest.mark.vllm

MAX_SAMPLE_COUNT = 1024 * 1024  # the largest qr_sample_count a request may ask for


def _unk_id(model: Path) -> int:
    vocab = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    return int(vocab["<unk>"])


def _post(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _records_with(path: Path, *labels: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The records file once every label has a record (the writer runs beside the engine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_records(path)
        if {r["label"] for r in rows} >= set(labels) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _model(base: str) -> str:
    with urllib.request.urlopen(base + "/v1/models", timeout=60) as response:
        return str(json.loads(response.read())["data"][0]["id"])


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here; the full-disk path is covered by the injected "
            f"fault of packages/qr-vllm/tests/test_sink_disk.py ({done.stderr.decode().strip()})"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _messages(exc: BaseException) -> str:
    seen = []
    while exc is not None and len(seen) < 20:
        seen.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "\n".join(seen)


# --- visible failure, admission, logging ---------------------------------------


@pytest.fixture(scope="module")
def failing_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("failing")
    records, log = tmp / "records.jsonl", tmp / "server.log"
    failure = _unk_id(tiny_model)
    entropy = EntropyServerProcess().start()
    env = {
        **entropy.environment("bidi_streaming"),
        "QR_FALLBACK_MODE": "error",
        "QR_FAILURE_STOP_TOKEN_ID": str(failure),
        "QR_RECORDS_PATH": str(records),
        "QR_SAMPLE_COUNT": "1024",
        "VLLM_LOGGING_COLOR": "0",
        "NO_COLOR": "1",
    }
    try:
        with openai_server_with(tiny_model, log, env) as base:
            yield {
                "base": base,
                "entropy": entropy,
                "records": records,
                "log": log,
                "failure": failure,
            }
    finally:
        entropy.stop()


def test_admission_refusals_are_short_and_logs_use_vllms_format(
    failing_server: dict[str, Any],
) -> None:
    base = failing_server["base"]
    model = _model(base)
    prompt = {"model": model, "prompt": "Once upon a time", "max_tokens": 4}
    # vLLM's request schema (vllm_xargs: str | int | float | list) turns JSON true into 1
    # before any plugin sees it: over HTTP, true is 1. The plugin refuses a boolean
    # wherever one reaches it (the offline API: packages/qr-vllm/tests/test_reliability.py).
    status, body = _post(
        base, {**prompt, "vllm_xargs": {"qr_sample_count": True, "qr_label": "coerced"}}
    )
    assert status == 200, body
    rows = [
        r for r in _records_with(failing_server["records"], "coerced") if r["label"] == "coerced"
    ]
    assert rows, "no record of the coerced request"
    assert {r["sample_count"] for r in rows} == {1}
    status, body = _post(base, {**prompt, "vllm_xargs": {"qr_label": "x" * 1_000_000}})
    assert status == 400, str(body)[:300]
    assert len(json.dumps(body)) < 4000
    assert "qr_label" in json.dumps(body)

    status, body = _post(
        base, {**prompt, "vllm_xargs": {"qr_log_level": "full", "qr_label": "logged"}}
    )
    assert status == 200, body
    log = failing_server["log"].read_text(errors="replace")
    # vLLM's format: level, then date and time, then the source, then the message.
    stamp = r"(INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(stamp + r".*qr-sampler ready", log), log[-3000:]
    assert re.search(stamp + r".*checked at start", log), log[-3000:]
    full = [ln for ln in log.splitlines() if "token: request=" in ln]
    assert len(full) >= 4, log[-3000:]
    assert all(re.search(stamp, ln) for ln in full)


def test_a_killed_server_ends_every_request_with_the_failure_token(
    failing_server: dict[str, Any],
) -> None:
    import openai

    base, entropy = failing_server["base"], failing_server["entropy"]
    failure, records = failing_server["failure"], failing_server["records"]
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    # Healthy: runs to its length.
    ok = client.completions.create(
        model=model,
        prompt="Once upon a time",
        max_tokens=12,
        extra_body={"ignore_eos": True, "vllm_xargs": {"qr_label": "healthy"}},
    )
    assert ok.choices[0].finish_reason == "length"
    assert ok.choices[0].stop_reason is None  # type: ignore[attr-defined]

    # In flight: ignore_eos, no stop token; the server is killed after a few tokens.
    stream = client.completions.create(
        model=model,
        prompt="The weather today is",
        max_tokens=200,
        stream=True,
        extra_body={"ignore_eos": True, "vllm_xargs": {"qr_label": "in-flight"}},
    )
    last: Any = None
    for chunks, chunk in enumerate(stream, start=1):
        if chunks == 5:
            entropy.kill()
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            last = chunk.choices[0]
    assert last is not None
    assert last.finish_reason == "stop"
    assert last.stop_reason == failure

    # After: ended at their first step, whatever their stop settings.
    variants: list[dict[str, Any]] = [
        {"ignore_eos": True},
        {"ignore_eos": True, "stop_token_ids": [3]},
        {},
    ]
    for i, extra in enumerate(variants):
        out = client.completions.create(
            model=model,
            prompt="It was a dark and stormy night",
            max_tokens=50,
            extra_body={**extra, "vllm_xargs": {"qr_label": f"after-{i}"}},
        )
        choice = out.choices[0]
        assert choice.finish_reason == "stop", extra
        assert choice.stop_reason == failure, extra  # type: ignore[attr-defined]
        assert out.usage is not None
        assert out.usage.completion_tokens == 1, extra  # the failure token itself

    rows = _records_with(records, "in-flight", *(f"after-{i}" for i in range(len(variants))))
    flight = [r for r in rows if r["label"] == "in-flight"]
    assert flight[-1]["status"] == "failed"
    assert flight[-1]["token_id"] == failure
    assert len(flight) < 200
    for i in range(len(variants)):
        mine = [r for r in rows if r["label"] == f"after-{i}"]
        assert [(r["status"], r["token_id"]) for r in mine] == [("failed", failure)]
        assert "quantum_grpc" in mine[0]["entropy_source"] or mine[0]["error"]
    assert all(isinstance(r["token_id"], int) and r["token_id"] >= 0 for r in rows)
    assert not any(r["is_fallback"] for r in rows)


# --- isolation beside a full disk --------------------------------------------------


def test_large_requests_do_not_fail_a_normal_one_and_a_full_disk_is_survived(
    tiny_model: Path, tmp_path: Path
) -> None:
    from qr_grpc._settings import DEFAULT_MAX_BYTES_PER_REQUEST

    failure = _unk_id(tiny_model)
    with (
        _tmpfs(tmp_path / "small", "size=64k") as small,
        EntropyServerProcess(max_bytes_per_request=DEFAULT_MAX_BYTES_PER_REQUEST) as entropy,
    ):
        records = small / "records.jsonl"
        env = {
            **entropy.environment("bidi_streaming"),
            "QR_FALLBACK_MODE": "error",
            "QR_FAILURE_STOP_TOKEN_ID": str(failure),
            "QR_RECORDS_PATH": str(records),
            "QR_SAMPLE_COUNT": "1024",
        }
        log = tmp_path / "server.log"
        with openai_server_with(tiny_model, log, env) as base:
            model = _model(base)

            def complete(tokens: int, **xargs: Any) -> dict[str, Any]:
                status, body = _post(
                    base,
                    {
                        "model": model,
                        "prompt": "Once upon a time",
                        "max_tokens": tokens,
                        "ignore_eos": True,
                        "vllm_xargs": xargs,
                    },
                )
                assert status == 200, body
                return body

            # Fill the disk (about 800 bytes a record, 64 KiB in all).
            for _ in range(2):
                complete(100, qr_label="filler")
            start = threading.Barrier(9)

            def large(i: int) -> dict[str, Any]:
                start.wait(300)
                return complete(6, qr_sample_count=MAX_SAMPLE_COUNT, qr_label=f"large-{i}")

            def normal() -> dict[str, Any]:
                start.wait(300)
                return complete(30, qr_label="normal")

            with ThreadPoolExecutor(9) as pool:
                larges = [pool.submit(large, i) for i in range(8)]
                normal_out = pool.submit(normal).result(900)
                large_outs = [f.result(900) for f in larges]
            # The normal request ran to its length: no failed step (error mode ends a
            # failed request with the failure token), and error mode has no fallback.
            choice = normal_out["choices"][0]
            assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
            assert normal_out["usage"]["completion_tokens"] == 30
            for out in large_outs:
                assert out["choices"][0]["finish_reason"] == "length", out
            # The engine keeps serving on the full disk.
            assert complete(5)["usage"]["completion_tokens"] == 5
        text = records.read_text()
        assert text.endswith("\n")
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows, "nothing was written before the disk filled"
        assert all(r["status"] == "ok" and not r["is_fallback"] for r in rows)
        server_log = log.read_text(errors="replace")
        errors = [ln for ln in server_log.splitlines() if "could not write" in ln]
        assert 1 <= len(errors) <= 2, errors  # rate-limited: at most once a minute
        assert "disk is full" in errors[0]


# --- start-up refusals --------------------------------------------------------------


def _start_fails(model: Path, **qr: str) -> str:
    with pytest.raises(Exception) as info, in_process_llm(model, **qr):  # noqa: PT011
        pass
    return _messages(info.value)


def test_a_directory_records_path_stops_the_start(tiny_model: Path, tmp_path: Path) -> None:
    text = _start_fails(
        tiny_model, QR_ENTROPY_SOURCE_TYPE="mock_uniform", QR_RECORDS_PATH=str(tmp_path)
    )
    assert "is a directory" in text, text
    assert str(tmp_path) in text, text


def test_a_read_only_records_path_stops_the_start(tiny_model: Path, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        text = _start_fails(
            tiny_model,
            QR_ENTROPY_SOURCE_TYPE="mock_uniform",
            QR_RECORDS_PATH=str(ro / "records.jsonl"),
        )
    assert "cannot be opened for writing" in text, text
    assert "Read-only" in text, text


def test_a_wrong_api_key_is_reported_at_start(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QR_SERVER_API_KEY", "the-right-key")
    with EntropyServerProcess() as entropy:
        monkeypatch.delenv("QR_SERVER_API_KEY")
        settings = {
            **entropy.environment("bidi_streaming"),
            "QR_GRPC_API_KEY": "a-wrong-key",
            "QR_SAMPLE_COUNT": "1024",
        }
        text = _start_fails(tiny_model, QR_FALLBACK_MODE="error", **settings)
        assert "failed its start-up check (unauthenticated)" in text, text
        assert "a-wrong-key" not in text
        os.environ.pop("QR_SERVER_API_KEY", None)
