"""SamplingLogger: levels, diagnostics, fallback warnings, the records file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from _steps import step
from qr_vllm import SamplingLogger


def test_full_level_logs_each_token(caplog: pytest.LogCaptureFixture) -> None:
    log = SamplingLogger("summary")
    with caplog.at_level(logging.INFO, logger="qr_sampler"):
        log.log_step(step(2, full=True))
    assert caplog.text.count("token: request=") == 2


def test_summary_logs_one_debug_line_per_step(caplog: pytest.LogCaptureFixture) -> None:
    log = SamplingLogger("summary")
    with caplog.at_level(logging.DEBUG, logger="qr_sampler"):
        log.log_step(step(3))
    assert caplog.text.count("step: 3 tokens") == 1
    assert "token: request" not in caplog.text


def test_none_level_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    log = SamplingLogger("none")
    with caplog.at_level(logging.DEBUG, logger="qr_sampler"):
        log.log_step(step(3))
    assert caplog.text == ""


def test_fallback_is_warned_once_and_recovery_too(caplog: pytest.LogCaptureFixture) -> None:
    log = SamplingLogger("none")
    with caplog.at_level(logging.WARNING, logger="qr_sampler"):
        log.log_step(step(1, fallback=True))
        log.log_step(step(1, fallback=True))
        log.log_step(step(1))
    assert caplog.text.count("fallback source") == 1
    assert caplog.text.count("primary source mock_uniform again") == 1
    assert log.summary()["fallback_tokens"] == 2


def test_diagnostic_mode_keeps_records_bounded() -> None:
    log = SamplingLogger("none", diagnostic_max_records=3)
    log.log_step(step(2, diagnostic=True))
    log.log_step(step(2, diagnostic=True))
    log.log_step(step(2))
    assert len(log.diagnostic_records) == 3
    summary = log.summary()
    assert summary["tokens"] == 6
    assert summary["steps"] == 3
    assert summary["diagnostic_records"] == 3


def test_failed_steps_are_counted_and_written(tmp_path: Path) -> None:
    log = SamplingLogger("none", records_path=tmp_path / "r.jsonl")
    log.log_step(step(2, status="failed"))
    log.log_step(step(0))
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert log.summary()["failed_tokens"] == 2
    assert "records" in log.summary()


def test_bad_level() -> None:
    with pytest.raises(
        ValueError, match="log level 'loud' is not allowed; allowed: none, summary, full"
    ):
        SamplingLogger("loud")  # type: ignore[arg-type]
