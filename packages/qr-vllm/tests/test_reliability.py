"""Admission and start-up rules of the reliability pass, with the real processor.

Visible failure (the failure stop token), refusals at admission (error mode
without a stop token, JSON booleans for numbers, no echo of large inputs),
bounded admission caches, split step fetches, the start-up source check and the
plugin's log lines going through vLLM's handlers.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from qr_entropy import (  # noqa: E402
    EntropySource,
    FallbackEntropySource,
    SourceCheck,
    SourceCheckError,
    SystemEntropySource,
)
from qr_vllm import ConfigValidationError, QRSamplerConfig  # noqa: E402
from qr_vllm._fetch import fetch_within  # noqa: E402
from qr_vllm._resolve import MAX_CACHED_COMPONENTS, MAX_CACHED_REQUESTS, RequestResolver  # noqa: E402
from qr_vllm._startup import check_source  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from test_processor import (  # noqa: E402
    VOCAB,
    FlakySource,
    add,
    emitted,
    make,
    one_hot_token,
    params,
    records,
)
from vllm import SamplingParams  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    # Admission builds its resolver from the environment once per process.
    monkeypatch.setattr(QRSamplerLogitsProcessor, "_admission_resolver", None)


def admit(sp: SamplingParams) -> None:
    QRSamplerLogitsProcessor.validate_params(sp)


# --- visible failure ---------------------------------------------------------


def test_admission_adds_the_failure_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_FAILURE_STOP_TOKEN_ID", "299")
    sp = SamplingParams(max_tokens=4, ignore_eos=True, stop_token_ids=[7])
    admit(sp)
    admit(sp)  # the same params for a second prompt: still once
    assert sp.stop_token_ids == [7, 299]
    assert 299 in sp.all_stop_token_ids
    bypass = SamplingParams(max_tokens=4, extra_args={"qr_bypass": True})
    admit(bypass)
    assert bypass.stop_token_ids == []


def test_error_mode_refuses_a_request_it_could_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QR_FALLBACK_MODE", "error")
    with pytest.raises(ConfigValidationError, match="ignore_eos=true and no stop_token_ids"):
        admit(SamplingParams(max_tokens=4, ignore_eos=True))
    admit(SamplingParams(max_tokens=4, ignore_eos=True, stop_token_ids=[3]))
    admit(SamplingParams(max_tokens=4))
    admit(SamplingParams(max_tokens=4, ignore_eos=True, extra_args={"qr_bypass": True}))
    # With a failure token every request can be ended: nothing is refused.
    monkeypatch.setattr(QRSamplerLogitsProcessor, "_admission_resolver", None)
    monkeypatch.setenv("QR_FAILURE_STOP_TOKEN_ID", "299")
    admit(SamplingParams(max_tokens=4, ignore_eos=True))


def test_other_modes_admit_ignore_eos_without_stop_tokens() -> None:
    admit(SamplingParams(max_tokens=4, ignore_eos=True))


def _admitted(failure: int, eos: int | None = 5, **extra: Any) -> SamplingParams:
    sp = params(eos=eos, **extra)
    sp.stop_token_ids = [*(sp.stop_token_ids or []), failure]
    return sp


def test_a_failed_request_ends_with_the_failure_token(tmp_path: Path) -> None:
    failure = VOCAB - 1
    source = FlakySource()
    proc = make(tmp_path, source=source, fallback_mode="error", failure_stop_token_id=failure)
    outputs = add(proc, (0, _admitted(failure)), (1, _admitted(failure, eos=None)))
    # The failure token is never chosen for a sampled row, however likely.
    logits = torch.zeros(2, VOCAB)
    logits[:, failure] = 50.0
    proc.apply(logits)
    emitted(logits, outputs)
    assert [one_hot_token(row) != failure for row in logits] == [True, True]
    source.down = True
    logits = torch.randn(2, VOCAB)
    proc.apply(logits)
    # Both end with it: the one with an end-of-sequence token too, so that the
    # response tells a failure from a natural end.
    assert [one_hot_token(row) for row in logits] == [failure, failure]
    rows = records(tmp_path, proc)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["token_id"] for r in failed] == [failure, failure]
    assert all(r["token_id"] is not None for r in rows)
    proc.close()


def test_a_failure_token_outside_the_vocabulary_refuses_to_start() -> None:
    from types import SimpleNamespace

    vllm_config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: 300))
    config = QRSamplerConfig(entropy_source_type="mock_uniform", failure_stop_token_id=300)
    with pytest.raises(ConfigValidationError, match=r"ids 0\.\.299"):
        QRSamplerLogitsProcessor(vllm_config, torch.device("cpu"), False, config=config)


# --- admission ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["qr_sample_count", "qr_top_k", "qr_top_p", "qr_fixed_temperature", "qr_min_p"]
)
@pytest.mark.parametrize("value", [True, False])
def test_json_booleans_are_refused_for_numbers(key: str, value: bool) -> None:
    with pytest.raises(ConfigValidationError, match=rf"{key}={value}.*not a boolean"):
        admit(SamplingParams(max_tokens=4, extra_args={key: value}))


def test_booleans_still_work_for_boolean_keys() -> None:
    admit(SamplingParams(max_tokens=4, extra_args={"qr_diagnostic_mode": True}))


@pytest.mark.parametrize(
    "extra",
    [
        {"qr_label": "x" * 1_000_000},
        {"qr_session": "y" * 1_000_000},
        {"qr_temperature_strategy": "z" * 1_000_000},
        {"qr_top_k": "w" * 1_000_000},
        {"qr_nope": "v" * 1_000_000},
        {"qr_top_p": ["u" * 1_000_000]},
    ],
)
def test_a_400_body_never_echoes_a_large_input(extra: dict[str, Any]) -> None:
    with pytest.raises(ConfigValidationError) as info:
        admit(SamplingParams(max_tokens=4, extra_args=extra))
    message = str(info.value)
    assert len(message) < 2000, message[:300]
    assert next(iter(extra)) in message
    assert "characters)" in message


def test_admission_caches_stay_bounded_over_50000_distinct_values() -> None:
    resolver = RequestResolver(QRSamplerConfig(entropy_source_type="mock_uniform"))
    for i in range(50_000):
        resolver.resolve({"qr_temperature_strategy": "edt", "qr_edt_base_temp": 0.5 + i * 1e-5})
        if i % 1000 == 0:
            requests, components = resolver.cache_sizes()
            assert requests <= MAX_CACHED_REQUESTS
            assert components <= MAX_CACHED_COMPONENTS
    # Unbounded, 50,000 values held 50,000 of each (about 53 MB).
    assert resolver.cache_sizes() == (MAX_CACHED_REQUESTS, MAX_CACHED_COMPONENTS)
    # A component still used by a cached request keeps working after eviction.
    again = resolver.resolve({"qr_temperature_strategy": "edt", "qr_edt_base_temp": 0.5})
    assert again.strategy.name == "edt"


# --- isolation: a step's fetch fits the source ---------------------------------


class CountingSource(SystemEntropySource):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.max_request_bytes = limit
        self.reads: list[int] = []

    def get_random_bytes(self, n: int) -> bytes:
        self.reads.append(n)
        return super().get_random_bytes(n)


def test_a_step_larger_than_the_limit_is_fetched_in_parts_that_fit() -> None:
    source = CountingSource(limit=1000)
    block = fetch_within(source, 9, 300)  # 2700 bytes: 3 rows (900 bytes) per read
    assert block.data.shape == (9, 300)
    assert source.reads == [900, 900, 900]
    source.reads.clear()
    one_row = fetch_within(source, 1, 2500)  # mixed amplifier groups: one flat row
    assert one_row.data.shape == (1, 2500)
    assert source.reads == [1000, 1000, 500]
    source.reads.clear()
    fetch_within(source, 2, 400)
    assert source.reads == [800]  # fits: one read


def test_parts_from_the_fallback_flag_the_whole_block() -> None:
    class DiesAfterOne(CountingSource):
        def get_random_bytes(self, n: int) -> bytes:
            if self.reads:
                from qr_entropy import EntropyUnavailableError

                raise EntropyUnavailableError("server gone")
            return super().get_random_bytes(n)

    primary = DiesAfterOne(limit=1000)
    source = FallbackEntropySource(primary, SystemEntropySource())
    block = fetch_within(source, 6, 500)
    assert block.data.shape == (6, 500)
    assert block.provenance.is_fallback
    assert "server gone" in block.provenance.fallback_reason


def test_many_large_requests_in_one_step_do_not_fail_it(tmp_path: Path) -> None:
    source = CountingSource(limit=4096)
    proc = make(tmp_path, source=source, fallback_mode="error", sample_count=4096)
    outputs = add(proc, *((i, params()) for i in range(5)))
    logits = torch.randn(5, VOCAB)
    proc.apply(logits)
    emitted(logits, outputs)
    assert source.reads == [4096] * 5
    rows = records(tmp_path, proc)
    assert [r["status"] for r in rows] == ["ok"] * 5
    proc.close()


# --- start-up check ------------------------------------------------------------


class RefusingSource(EntropySource):
    closed = False

    @property
    def name(self) -> str:
        return "refusing"

    def get_random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def check(self, timeout_s: float | None = None) -> SourceCheck:
        return SourceCheck(
            ok=False, source=self.name, detail="server says: bad API key", problem="unauthenticated"
        )

    def close(self) -> None:
        self.closed = True


def test_a_failed_check_stops_the_start_in_error_mode(caplog: pytest.LogCaptureFixture) -> None:
    source = RefusingSource()
    config = QRSamplerConfig(entropy_source_type="mock_uniform", fallback_mode="error")
    with (
        caplog.at_level(logging.ERROR, logger="qr_sampler"),
        pytest.raises(SourceCheckError, match="bad API key") as info,
    ):
        QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config, source=source)
    assert info.value.problem == "unauthenticated"
    assert "does not start" in caplog.text
    assert source.closed


def test_a_failed_check_is_logged_once_with_a_fallback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="qr_sampler"):
        check_source(RefusingSource(), "system")
    [line] = [r for r in caplog.records if "start-up check" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "bad API key" in line.getMessage()
    assert "fallback" in line.getMessage()


# --- logging -----------------------------------------------------------------


def test_plugin_lines_go_through_vllms_log_format(tmp_path: Path) -> None:
    """In a fresh process (pytest's own handlers would hide the effect here)."""
    script = textwrap.dedent(
        """
        import logging
        from vllm.logger import _configure_vllm_root_logger
        from qr_vllm._logging import attach_to_vllm_logging
        assert not attach_to_vllm_logging()  # vLLM's logging is not configured yet
        _configure_vllm_root_logger()  # what every vLLM process does at its start
        assert attach_to_vllm_logging()
        assert attach_to_vllm_logging()  # idempotent
        logging.getLogger("qr_sampler").info("token: request=1 seq=0 token=42")
        logging.getLogger("qr_vllm._sink").error("records trouble")
        """
    )
    env = {**os.environ, "VLLM_LOGGING_COLOR": "0", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    lines = [ln for ln in out.splitlines() if "token: request=1" in ln or "records trouble" in ln]
    assert len(lines) == 2, out  # once each: not again through the root logger
    # vLLM's format: the process, the level, date and time, file and line, the message.
    stamp = r" \d\d-\d\d \d\d:\d\d:\d\d \[.+:\d+\] "
    assert re.search("INFO" + stamp + "token: request=1", lines[0]), lines
    assert re.search("ERROR" + stamp + "records trouble", lines[1]), lines
