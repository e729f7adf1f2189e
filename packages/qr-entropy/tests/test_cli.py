"""The qr-entropy command: end to end through the console script, and in-process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qr_entropy.cli import app
from typer.testing import CliRunner

SCRIPT = shutil.which("qr-entropy", path=str(Path(sys.executable).parent)) or shutil.which(
    "qr-entropy"
)
runner = CliRunner(env={"COLUMNS": "200"})


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    assert SCRIPT is not None, "the qr-entropy console script is not installed"
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", **env},
    )


@pytest.mark.parametrize("command", [[], ["list"], ["sample"], ["check"], ["bench"]])
def test_help_on_everything(command: list[str]) -> None:
    result = _run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert b"Usage: qr-entropy" in result.stdout


def test_list_end_to_end() -> None:
    result = _run("list")
    assert result.returncode == 0, result.stderr
    for name in (b"system", b"timing_noise", b"mock_uniform"):
        assert name in result.stdout


def test_sample_raw_hex_and_file_end_to_end(tmp_path: Path) -> None:
    raw = _run("sample", "--bytes", "1000", "--source", "system")
    assert raw.returncode == 0, raw.stderr
    assert len(raw.stdout) == 1000
    assert b"source=system fallback=False" in raw.stderr
    hexed = _run("sample", "-n", "16", "--hex", "-s", "timing_noise")
    assert hexed.returncode == 0, hexed.stderr
    assert len(bytes.fromhex(hexed.stdout.decode().strip())) == 16
    assert b"health=ok" in hexed.stderr
    out = tmp_path / "bytes.bin"
    to_file = _run("sample", "-n", "1K", "-s", "mock_uniform", "--out", str(out), QR_MOCK_SEED="5")
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == b""
    again = _run("sample", "-n", "1024", "-s", "mock_uniform", QR_MOCK_SEED="5")
    assert out.read_bytes() == again.stdout


def test_sample_zero_bytes() -> None:
    result = _run("sample", "-n", "0")
    assert result.returncode == 0
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--bytes=-5"], b"n=-5 is negative"),
        (["sample", "-n", "2G"], b"exceeds max_request_bytes"),
        (["sample", "-n", "ten"], b"is not a byte count"),
        (["sample", "-n", "4", "-s", "lava_lamp"], b"'lava_lamp' not found"),
    ],
)
def test_bad_input_end_to_end(args: list[str], message: bytes) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_setting_end_to_end() -> None:
    result = _run("sample", "-n", "4", QR_MAX_REQUEST_BYTES="0")
    assert result.returncode == 2
    assert b"max_request_bytes" in result.stderr


def test_check_passes_on_system_end_to_end() -> None:
    result = _run("check", "--bytes", "256K", "--source", "system", "--sample-count", "256")
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"byte frequency" in result.stdout
    assert b"KS of u" in result.stdout
    assert b"overall: PASS" in result.stdout
    assert b"significance" in result.stdout


def test_check_fails_on_a_biased_source_end_to_end() -> None:
    result = _run(
        "check", "-n", "1M", "-s", "mock_uniform", QR_MOCK_MEAN_SHIFT="2", QR_MOCK_SEED="1"
    )
    assert result.returncode == 1
    assert b"FAIL" in result.stdout


def test_bench_end_to_end() -> None:
    result = _run("bench", "--source", "system", "--source", "mock_uniform", "--calls", "3")
    assert result.returncode == 0, result.stderr
    assert b"os.urandom (baseline)" in result.stdout
    assert b"mock_uniform" in result.stdout


# In-process runs of the same commands, so coverage sees the CLI code.


def test_inprocess_check_with_progress_and_health_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_MOCK_SEED", "1")
    ok = runner.invoke(app, ["check", "-n", "5M", "-s", "mock_uniform", "--chunk", "1M"])
    assert ok.exit_code == 0, ok.output
    assert "overall: PASS" in ok.output
    bad = runner.invoke(app, ["check", "-n", "4K", "-s", "mock_uniform", "--alpha", "0.5"])
    assert "skipped" in bad.output


def test_inprocess_sample_and_list(tmp_path: Path) -> None:
    out = tmp_path / "x.hex"
    result = runner.invoke(app, ["sample", "-n", "8", "--hex", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(bytes.fromhex(out.read_text().strip())) == 8
    assert runner.invoke(app, ["sample", "-n", "4"]).exit_code == 0
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert "timing_noise" in listed.output


def test_inprocess_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["sample", "-n", "4", "-s", "nope"]).exit_code == 2
    assert runner.invoke(app, ["sample", "--bytes=-1"]).exit_code == 2
    assert runner.invoke(app, ["check", "-n", "10"]).exit_code == 1
    monkeypatch.setenv("QR_FALLBACK_MODE", "bogus")
    assert runner.invoke(app, ["list"]).exit_code == 2


def test_inprocess_bench_reports_broken_and_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from qr_entropy import TimingNoiseSource

    monkeypatch.setattr(TimingNoiseSource, "is_available", property(lambda self: False))
    result = runner.invoke(
        app, ["bench", "-s", "nope", "-s", "timing_noise", "-s", "system", "--calls", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "UnknownSourceError" in result.output
    assert "not available" in result.output


def test_inprocess_bench_source_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_MAX_REQUEST_BYTES", "100")
    result = runner.invoke(app, ["bench", "-s", "system", "--calls", "2"])
    assert "EntropyConfigError" in result.output


def test_inprocess_list_shows_a_source_that_fails_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from qr_entropy import MockUniformSource

    def broken(cls: type, settings: object) -> None:
        raise RuntimeError("driver missing")

    monkeypatch.setattr(MockUniformSource, "from_settings", classmethod(broken))
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "RuntimeError: driver missing" in result.output


def test_inprocess_check_on_a_stuck_health_tested_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from qr_entropy.sources import _timing

    ticks = iter(range(0, 10**12, 100))
    monkeypatch.setattr(_timing.time, "perf_counter_ns", lambda: next(ticks))
    result = runner.invoke(app, ["check", "-n", "4K", "-s", "timing_noise"])
    assert result.exit_code == 1
    assert "repetition count test failed" in result.output
