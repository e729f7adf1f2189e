"""The failure policy and the records a step emits, without torch or vLLM."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from _requests import resolver, state
from qr_entropy import EntropySource, EntropyUnavailableError, build_entropy_source, row_digest
from qr_vllm import QRSamplerConfig, SamplingLogger
from qr_vllm._emit import RecordEmitter
from qr_vllm._failure import (
    LEADER_FAILED,
    FailedRequests,
    describe,
    fail_requests,
    is_expected,
    stop_rows,
    stop_tokens,
)
from qr_vllm._plan import EntropyPlan, RowSet, build_plan
from qr_vllm._records import N_VALUE_COLUMNS, EngineIdentity
from qr_vllm._slots import SlotTable


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_only_missing_entropy_is_an_expected_failure() -> None:
    assert is_expected(EntropyUnavailableError("down"))
    assert not is_expected(RuntimeError("bug"))
    assert describe(EntropyUnavailableError("down")) == "EntropyUnavailableError: down"
    assert "rank 0" in LEADER_FAILED


def test_requests_fail_once_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    res = resolver()
    a, b = state(res, label="a"), state(res, label="b", failure="E: earlier")
    with caplog.at_level(logging.ERROR, logger="qr_sampler"):
        assert fail_requests([a, b], "E: now") == 1
        assert fail_requests([a, b], "E: again") == 0
    assert (a.failure, b.failure) == ("E: now", "E: earlier")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"request {a.info.request_serial}" in message
    assert "'a'" in message
    assert "E: now" in message


def test_failed_requests_are_counted_by_their_named_source() -> None:
    res = resolver(sources={"control": {"entropy_source_type": "system"}})
    a, b = state(res, label="a"), state(res, label="b", source="control")
    c = state(res, label="c", source="control", failure="E: earlier")
    failed = FailedRequests()
    assert fail_requests([a, b, c], "E: now", failed) == 2
    assert fail_requests([a, b, c], "E: again", failed) == 0  # each is counted once
    failed.count("control")  # a request refused by the engine itself
    assert failed.snapshot() == {"default": 1, "control": 2}
    assert failed.total() == 3
    snapshot = failed.snapshot()
    failed.count("default")
    assert snapshot == {"default": 1, "control": 2}  # a copy: a scrape reads it apart


def test_rows_without_a_stop_token_are_left_to_vllm() -> None:
    res = resolver()
    states = [state(res, stop_token=3), state(res, stop_token=-1), state(res, stop_token=0)]
    assert stop_tokens(states).tolist() == [3, -1, 0]
    rows, tokens = stop_rows(np.array([7, 8, 9]), states)
    assert (rows.tolist(), tokens.tolist()) == ([7, 9], [3, 0])


def emitter(source: EntropySource, *, enabled: bool = True) -> tuple[RecordEmitter, SamplingLogger]:
    sampling_logger = SamplingLogger("none")
    engine = EngineIdentity("e" * 32, None)
    return (
        RecordEmitter(sampling_logger, "v2", source, enabled=enabled, engine=engine),
        sampling_logger,
    )


def sampled_rows(n: int) -> RowSet:
    res = resolver()
    slots = SlotTable()
    for i in range(n):
        slots.set_slot(10 + i, state(res, label=f"r{i}"))
    return build_plan(slots, n, 100, np.arange(10, 10 + n), with_penalties=False).sampled


def test_sampled_rows_become_ok_records_with_the_blocks_provenance() -> None:
    source = build_entropy_source(QRSamplerConfig(entropy_source_type="mock_uniform"))
    emit, sampling_logger = emitter(source)
    rows = sampled_rows(2)
    block = source.fetch_block(2, 4)
    values = np.arange(2 * N_VALUE_COLUMNS, dtype=np.float64).reshape(2, N_VALUE_COLUMNS)
    before = time.time_ns()
    plan = EntropyPlan((), 2, 4, uniform=True)
    emit.sampled(rows, values, block, plan, 1_000_000)
    emit.sampled(rows, values, block, plan, 1_000_000)
    recs = sampling_logger.diagnostic_records
    assert [(r.slot, r.sequence_number, r.status) for r in recs] == [
        (10, 0, "ok"),
        (11, 0, "ok"),
        (10, 1, "ok"),
        (11, 1, "ok"),
    ]
    first = recs[1]
    assert (first.token_id, first.token_rank, first.u) == (9, 10, 15.0)
    assert first.label == "r1"
    assert first.entropy_source == block.provenance.source
    assert first.entropy_fetch_ms == 1.0
    assert first.runner == "v2"
    assert first.timestamp_ns >= before
    assert 0 < first.entropy_generated_at_ns <= first.timestamp_ns
    # Each token names exactly its own row of the block, and the writer.
    assert [r.entropy_digest for r in recs[:2]] == [row_digest(block.data[i]) for i in range(2)]
    assert (first.engine_id, first.dp_rank, first.records_schema) == ("e" * 32, None, 2)
    assert first.health == "not_tested"
    source.close()


def test_failed_rows_record_their_stop_tokens_and_the_source_name() -> None:
    source = build_entropy_source(QRSamplerConfig(entropy_source_type="mock_uniform"))
    emit, sampling_logger = emitter(source)
    emit.failed(sampled_rows(2), "EntropyUnavailableError: down")
    recs = sampling_logger.diagnostic_records
    assert [(r.status, r.token_id, r.u, r.sample_count) for r in recs] == [
        ("failed", 5, None, 0),
        ("failed", 5, None, 0),
    ]
    assert {r.entropy_source for r in recs} == {source.name}
    assert {r.error for r in recs} == {"EntropyUnavailableError: down"}
    assert {r.health for r in recs} == {"not_tested"}
    source.close()


def test_a_follower_emits_nothing() -> None:
    source = build_entropy_source(QRSamplerConfig(entropy_source_type="mock_uniform"))
    emit, sampling_logger = emitter(source, enabled=False)
    emit.failed(sampled_rows(1), "E: x")
    assert sampling_logger.diagnostic_records == []
    assert (sampling_logger.steps, sampling_logger.failed_tokens) == (0, 0)
    source.close()
