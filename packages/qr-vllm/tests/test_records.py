"""TokenSamplingRecord and StepRecords."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from _steps import step
from qr_vllm import TokenSamplingRecord
from qr_vllm._records import N_VALUE_COLUMNS, Column


def test_records_carry_every_field() -> None:
    records = step(2).records()
    assert len(records) == 2
    first = records[0]
    assert first.token_id == 100
    assert records[1].token_id == 101
    assert first.token_rank == 1
    assert first.token_prob == 0.25
    assert first.num_candidates == 10
    assert first.u == 0.5
    assert first.z_score == 0.0
    assert first.sample_mean == 127.5
    assert first.sample_count == 16
    assert first.temperature == 0.7
    assert first.shannon_entropy == 2.5
    assert first.entropy_source == "mock_uniform"
    assert first.entropy_fetch_ms == 1.5
    assert first.config_hash == "0123456789abcdef"
    assert first.session == "sess"
    assert first.label == "label-1"
    assert first.status == "ok"


def test_records_are_frozen_and_slotted() -> None:
    record = step(1).records()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.token_id = 3  # type: ignore[misc]
    assert not hasattr(record, "__dict__")


def test_failed_rows_have_no_values() -> None:
    record = step(1, status="failed").records()[0]
    assert record.status == "failed"
    assert record.u is None
    assert record.token_rank is None
    assert record.sample_count == 0
    assert record.token_id == 7
    assert "down" in record.error


def test_jsonl_round_trip_and_non_finite_values() -> None:
    s = step(2)
    assert s.values is not None
    s.values[1, Column.SHANNON_ENTROPY] = np.inf
    lines = s.to_jsonl().decode().splitlines()
    assert len(lines) == 2
    parsed = [json.loads(line) for line in lines]
    assert parsed[1]["shannon_entropy"] is None
    rebuilt = TokenSamplingRecord.from_dict(parsed[0])
    assert rebuilt == s.records()[0]


def test_empty_step_serialises_to_nothing() -> None:
    s = step(0)
    assert len(s) == 0
    assert s.to_jsonl() == b""


def test_each_named_column_lands_in_the_record_field_of_that_name() -> None:
    s = step(1)
    assert s.values is not None
    assert s.values.shape[1] == N_VALUE_COLUMNS == len(Column)
    s.values[0] = np.arange(N_VALUE_COLUMNS) + 1.0  # a distinct value per column
    record = s.records()[0].to_dict()
    for column in Column:
        if column is Column.TOKEN_ID:
            continue  # the emitted token comes from token_ids (a failed row has no values)
        assert record[column.name.lower()] == column + 1.0, column.name
