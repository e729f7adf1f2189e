"""Slot bookkeeping and the batch plan, without torch or vLLM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _requests import resolver, state
from qr_vllm._plan import BatchPlan, build_plan, group_rows, plan_key
from qr_vllm._slots import SlotTable

VOCAB = 300


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("QR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def table(*entries: tuple[int, object]) -> SlotTable:
    slots = SlotTable()
    for slot, st in entries:
        slots.set_slot(slot, st)  # type: ignore[arg-type]
    return slots


def plan(slots: SlotTable, n_rows: int, row_slots: object = None, **kw: bool) -> BatchPlan:
    rs = None if row_slots is None else np.asarray(row_slots, dtype=np.int64)
    return build_plan(slots, n_rows, VOCAB, rs, with_penalties=kw.get("penalties", False))


# --- slots ---------------------------------------------------------------------


def test_slot_changes_move_the_version_only_when_something_changed() -> None:
    res = resolver()
    a, b = state(res, label="a"), state(res, label="b")
    slots = SlotTable()
    slots.set_slot(0, a)
    slots.set_slot(1, b)
    v = slots.version
    slots.remove(7)  # nothing there
    assert slots.version == v
    slots.swap(0, 1)
    assert (slots.get(0), slots.get(1)) == (b, a)
    slots.move(0, 3)
    assert (slots.get(0), slots.get(3)) == (None, b)
    slots.move(5, 1)  # moving an empty slot clears the destination
    assert slots.get(1) is None
    assert slots.version == v + 3
    slots.set_slot(3, None)
    assert not slots
    assert len(slots) == 0


def test_sequence_numbers_follow_the_output_list_or_count() -> None:
    res = resolver()
    outputs: list[int] = [9, 9]
    v1 = state(res, output_ids=outputs)
    assert [v1.sequence_number(), v1.sequence_number()] == [2, 2]  # a discarded sample
    outputs.append(9)
    assert v1.sequence_number() == 3
    v2 = state(res)
    assert [v2.sequence_number() for _ in range(3)] == [0, 1, 2]


# --- the plan ------------------------------------------------------------------


def test_every_row_one_strategy_one_amplifier() -> None:
    res = resolver()
    slots = table(*((i, state(res, top_k=[0, 5, 1000][i])) for i in range(3)))
    p = plan(slots, 3)
    assert p.every_row
    assert p.sampled.rows.tolist() == [0, 1, 2]
    assert p.sampled.slot_ids.tolist() == [0, 1, 2]
    assert p.failed.size == 0
    assert p.filters is not None
    assert p.filters.top_k.tolist() == [0, 5, VOCAB]  # off, as asked, capped at the vocabulary
    assert p.filters.top_p.dtype == np.float32
    assert len(p.temperature) == 1
    assert p.temperature[0].positions is None
    assert p.entropy is not None
    assert p.entropy.uniform
    # randomized_pit (the default) reads 7 V bytes per row beyond the 32 S bytes.
    assert (p.entropy.fetch_rows, p.entropy.fetch_count) == (3, 32 + 7)
    assert p.penalties is None
    assert p.key == b""


def test_runner_v2_rows_map_to_slots_and_foreign_rows_are_skipped() -> None:
    res = resolver()
    slots = table((4, state(res, label="x")), (9, state(res, label="y")))
    mapping = [9, 2, 4, 4]  # slot 2 holds no qr-sampled request; 4 has two rows
    p = plan(slots, 4, mapping)
    assert not p.every_row
    assert p.sampled.rows.tolist() == [0, 2, 3]
    assert p.sampled.slot_ids.tolist() == [9, 4, 4]
    assert [i.label for i in p.sampled.infos] == ["y", "x", "x"]
    assert p.key == plan_key(np.asarray(mapping)) != b""


def test_failed_requests_are_planned_apart_and_forced_only_with_a_stop_token() -> None:
    res = resolver()
    slots = table(
        (0, state(res)),
        (1, state(res, failure="E: down", stop_token=11)),
        (2, state(res, failure="E: down", stop_token=-1)),
    )
    p = plan(slots, 3)
    assert p.sampled.rows.tolist() == [0]
    assert not p.every_row
    assert p.failed.rows.tolist() == [1, 2]
    assert p.forced_rows.tolist() == [1]
    assert p.forced_tokens.tolist() == [11]


def test_only_failed_rows_plan_no_sampling() -> None:
    res = resolver()
    p = plan(table((0, state(res, failure="E: down"))), 1)
    assert p.sampled.size == 0
    assert p.filters is None
    assert p.entropy is None
    assert p.temperature == ()


def test_mixed_sample_counts_share_one_fetch_with_contiguous_byte_ranges() -> None:
    res = resolver()
    counts = [16, 64, 16, 8]
    slots = table(*((i, state(res, sample_count=c)) for i, c in enumerate(counts)))
    p = plan(slots, 4)
    assert p.entropy is not None
    assert not p.entropy.uniform
    assert (p.entropy.fetch_rows, p.entropy.fetch_count) == (1, sum(counts) + 7 * len(counts))
    groups = [
        (g.sample_count, g.row_bytes, g.positions.tolist(), g.byte_offset) for g in p.entropy.groups
    ]
    assert groups == [(16, 23, [0, 2], 0), (64, 71, [1], 46), (8, 15, [3], 117)]


def test_rows_group_by_temperature_strategy() -> None:
    res = resolver()
    fixed = {"temperature_strategy": "fixed"}
    edt = {"temperature_strategy": "edt"}
    slots = table((0, state(res, **edt)), (1, state(res, **fixed)), (2, state(res, **edt)))
    p = plan(slots, 3)
    names = [
        (g.strategy.name, None if g.positions is None else g.positions.tolist())
        for g in p.temperature
    ]
    assert names == [("edt", [0, 2]), ("fixed", [1])]


def test_penalties_only_when_asked_and_only_their_rows() -> None:
    res = resolver()
    slots = table((0, state(res)), (1, state(res, penalties=(0.5, 0.25, 1.2))))
    assert plan(slots, 2).penalties is None
    pen = plan(slots, 2, penalties=True).penalties
    assert pen is not None
    assert pen.positions.tolist() == [1]
    assert pen.presence.tolist() == [0.5]
    assert pen.frequency.tolist() == [0.25]
    assert pen.repetition.tolist() == [pytest.approx(1.2)]


def test_group_rows_tells_components_apart_by_identity() -> None:
    one, other = object(), object()
    assert group_rows([one, one]) == [(one, None)]
    groups = group_rows([one, other, one])
    assert [(c, p.tolist()) for c, p in groups if p is not None] == [(one, [0, 2]), (other, [1])]
