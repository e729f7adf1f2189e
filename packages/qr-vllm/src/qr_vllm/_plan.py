"""The batch plan: what each row of a step's logits needs, worked out once per batch change.

A plan says which logits rows are sampled with entropy and for which requests,
which rows belong to requests that already failed, each sampled row's filters,
how the rows group by temperature strategy and by amplifier (so each component
runs once per step over its rows), the shape of the step's one entropy fetch and
where each group's bytes lie in it, and which rows carry penalties (runner V1).

Plans hold host arrays only (numpy); `qr_vllm._device` puts them on the logits'
device. Building one needs neither torch nor vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from qr_core import SignalAmplifier, TemperatureStrategy

from qr_vllm._failure import stop_rows
from qr_vllm._records import RequestInfo
from qr_vllm._slots import SlotState

__all__ = [
    "AmplifierGroup",
    "BatchPlan",
    "EntropyPlan",
    "Filters",
    "PenaltyRows",
    "RowSet",
    "SourcePlan",
    "TemperatureGroup",
    "build_plan",
]

_NO_ROWS = np.empty(0, dtype=np.int64)


class _Slots(Protocol):
    def get(self, slot: int) -> SlotState | None: ...


@dataclass(frozen=True, slots=True)
class RowSet:
    """Some rows of the logits and the requests they belong to, in row order."""

    rows: np.ndarray  # int64 logits rows
    states: tuple[SlotState, ...]
    slot_ids: np.ndarray  # int64 batch slot of each row

    @property
    def size(self) -> int:
        return int(self.rows.size)

    @property
    def infos(self) -> tuple[RequestInfo, ...]:
        return tuple(s.info for s in self.states)


@dataclass(frozen=True, slots=True)
class Filters:
    """Each sampled row's top-k (0: off, at most the vocabulary), top-p and min-p."""

    top_k: np.ndarray  # int64
    top_p: np.ndarray  # float32
    min_p: np.ndarray  # float32


@dataclass(frozen=True, slots=True)
class TemperatureGroup:
    """Sampled rows that share one temperature strategy."""

    strategy: TemperatureStrategy
    positions: np.ndarray | None  # int64 positions among the sampled rows; None: all of them


@dataclass(frozen=True, slots=True)
class AmplifierGroup:
    """Sampled rows that share one amplifier and sample count, and where their bytes lie."""

    amplifier: SignalAmplifier
    sample_count: int  # the S bytes of each row
    row_bytes: int  # the bytes fetched per row: amplifier.row_bytes(sample_count)
    positions: np.ndarray  # int64 positions among the sampled rows
    byte_offset: int  # of the group's first byte in the flattened block


@dataclass(frozen=True, slots=True)
class EntropyPlan:
    """The step's one fetch and how its bytes become one u per sampled row.

    When every row has the same amplifier and sample count the block is fetched
    as (rows, row_bytes) and amplified in one call; otherwise it is fetched as
    (1, total_bytes) and each group reads its own stretch of it (``row_bytes`` is
    what the amplifier reads per row: ``sample_count`` plus its V bytes).
    """

    groups: tuple[AmplifierGroup, ...]
    fetch_rows: int
    fetch_count: int
    uniform: bool


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """Sampled rows that draw from one named source, and that source's one fetch."""

    name: str
    positions: np.ndarray | None  # int64 positions among the sampled rows; None: all of them
    rows: RowSet
    entropy: EntropyPlan


@dataclass(frozen=True, slots=True)
class PenaltyRows:
    """Sampled rows whose request asks for repetition / frequency / presence penalties."""

    positions: np.ndarray  # int64 positions among the sampled rows
    states: tuple[SlotState, ...]
    presence: np.ndarray  # float32
    frequency: np.ndarray  # float32
    repetition: np.ndarray  # float32


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Everything a step needs to know about its rows, valid until the batch changes.

    Attributes:
        n_rows: Rows of the logits.
        key: The row-to-slot mapping the plan was built for (empty under runner V1).
        sampled: Rows sampled with entropy this step.
        every_row: True when ``sampled`` is rows 0..n_rows-1 (no gather needed).
        failed: Rows of requests that failed earlier.
        forced_rows: The failed rows that have a stop token, and ``forced_tokens``
            those tokens; the rest are left to vLLM.
        filters: Per sampled row, top-k / top-p / min-p (None when none is sampled).
        temperature: Sampled rows grouped by temperature strategy.
        entropy: The fetch and the amplifier groups when every sampled row draws from
            one source (None when no row is sampled or several sources are in use).
        sources: Per named source in use, its rows and its fetch (one per source).
        replay: Positions among the sampled rows of requests that replay recorded u.
        penalties: Rows with penalties (runner V1), None when none has any.
    """

    n_rows: int
    key: bytes
    sampled: RowSet
    every_row: bool
    failed: RowSet
    forced_rows: np.ndarray
    forced_tokens: np.ndarray
    filters: Filters | None = None
    temperature: tuple[TemperatureGroup, ...] = ()
    entropy: EntropyPlan | None = None
    penalties: PenaltyRows | None = None
    sources: tuple[SourcePlan, ...] = ()
    replay: tuple[int, ...] = ()


def plan_key(row_slots: np.ndarray | None) -> bytes:
    """What identifies a row-to-slot mapping (runner V2); empty under runner V1."""
    if row_slots is None:
        return b""
    return np.ascontiguousarray(row_slots, dtype=np.int64).tobytes()


def build_plan(
    slots: _Slots,
    n_rows: int,
    vocab: int,
    row_slots: np.ndarray | None,
    *,
    with_penalties: bool,
    key: bytes | None = None,
) -> BatchPlan:
    """Plan a step over ``n_rows`` rows of logits.

    Args:
        slots: The requests by slot (a `SlotTable` or any mapping's ``get``).
        n_rows: Rows of the logits.
        vocab: Their width (top-k is capped at it).
        row_slots: The slot of each row (runner V2); None when row i is slot i.
        with_penalties: Plan the rows' penalties (runner V1 applies them itself).
        key: `plan_key` of ``row_slots`` when the caller has it already.
    """
    slot_of_row = (
        np.arange(n_rows, dtype=np.int64)
        if row_slots is None
        else np.asarray(row_slots, dtype=np.int64)
    )
    rows: list[int] = []
    states: list[SlotState] = []
    failed_rows: list[int] = []
    failed_states: list[SlotState] = []
    for row, slot in enumerate(slot_of_row.tolist()):
        state = slots.get(slot)
        if state is None:
            continue
        if state.failure:
            failed_rows.append(row)
            failed_states.append(state)
        else:
            rows.append(row)
            states.append(state)
    sampled = _row_set(rows, states, slot_of_row)
    failed = _row_set(failed_rows, failed_states, slot_of_row)
    forced_rows, forced_tokens = stop_rows(failed.rows, failed.states)
    if not states:
        return BatchPlan(
            n_rows=n_rows,
            key=plan_key(row_slots) if key is None else key,
            sampled=sampled,
            every_row=len(rows) == n_rows,
            failed=failed,
            forced_rows=forced_rows,
            forced_tokens=forced_tokens,
        )
    cfgs = [s.request.config for s in states]
    sources = _source_plans(sampled)
    return BatchPlan(
        n_rows=n_rows,
        key=plan_key(row_slots) if key is None else key,
        sampled=sampled,
        every_row=len(rows) == n_rows,
        failed=failed,
        forced_rows=forced_rows,
        forced_tokens=forced_tokens,
        filters=Filters(
            top_k=np.array(
                [min(c.top_k, vocab) if c.top_k > 0 else 0 for c in cfgs], dtype=np.int64
            ),
            top_p=np.array([c.top_p for c in cfgs], dtype=np.float32),
            min_p=np.array([c.min_p for c in cfgs], dtype=np.float32),
        ),
        temperature=tuple(
            TemperatureGroup(strategy, positions)
            for strategy, positions in group_rows([s.request.strategy for s in states])
        ),
        entropy=sources[0].entropy if len(sources) == 1 else None,
        penalties=_penalty_rows(states) if with_penalties else None,
        sources=sources,
        replay=tuple(i for i, s in enumerate(states) if s.request.config.replay_u),
    )


def group_rows(keys: Sequence[Any]) -> list[tuple[Any, np.ndarray | None]]:
    """Rows grouped by component identity, in order of first appearance.

    One group without positions (None) when every row shares one key. A key is a
    component or a (component, count) pair; components are told apart by identity.
    """
    first = keys[0]
    if all(k is first or k == first for k in keys):
        return [(first, None)]
    order: dict[tuple[int, int], list[int]] = {}
    comps: dict[tuple[int, int], Any] = {}
    for i, k in enumerate(keys):
        ident = (id(k[0]), k[1]) if isinstance(k, tuple) else (id(k), 0)
        order.setdefault(ident, []).append(i)
        comps[ident] = k
    return [(comps[ident], np.asarray(pos, dtype=np.int64)) for ident, pos in order.items()]


def _row_set(rows: list[int], states: list[SlotState], slot_of_row: np.ndarray) -> RowSet:
    if not rows:
        return RowSet(_NO_ROWS, (), _NO_ROWS)
    rows_np = np.asarray(rows, dtype=np.int64)
    return RowSet(rows_np, tuple(states), slot_of_row[rows_np])


def _entropy_plan(states: Sequence[SlotState]) -> EntropyPlan:
    keys = [(s.request.amplifier, s.request.config.sample_count) for s in states]
    groups: list[AmplifierGroup] = []
    offset = 0
    for (amplifier, count), positions in group_rows(keys):
        pos = np.arange(len(states), dtype=np.int64) if positions is None else positions
        width = amplifier.row_bytes(count)
        groups.append(AmplifierGroup(amplifier, count, width, pos, offset))
        offset += pos.size * width
    if len(groups) == 1:
        return EntropyPlan(tuple(groups), len(states), groups[0].row_bytes, uniform=True)
    return EntropyPlan(tuple(groups), 1, offset, uniform=False)


def _source_plans(sampled: RowSet) -> tuple[SourcePlan, ...]:
    """The sampled rows by named source, in order of first appearance."""
    states = sampled.states
    names = [s.request.config.source for s in states]
    if all(name == names[0] for name in names):
        return (SourcePlan(names[0], None, sampled, _entropy_plan(states)),)
    order: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        order.setdefault(name, []).append(i)
    plans = []
    for name, positions in order.items():
        pos = np.asarray(positions, dtype=np.int64)
        chosen = [states[i] for i in positions]
        rows = RowSet(sampled.rows[pos], tuple(chosen), sampled.slot_ids[pos])
        plans.append(SourcePlan(name, pos, rows, _entropy_plan(chosen)))
    return tuple(plans)


def _penalty_rows(states: Sequence[SlotState]) -> PenaltyRows | None:
    pos = [i for i, s in enumerate(states) if s.penalties is not None]
    if not pos:
        return None
    chosen = tuple(states[i] for i in pos)
    vals = [s.penalties for s in chosen if s.penalties is not None]
    return PenaltyRows(
        positions=np.asarray(pos, dtype=np.int64),
        states=chosen,
        presence=np.array([v[0] for v in vals], dtype=np.float32),
        frequency=np.array([v[1] for v in vals], dtype=np.float32),
        repetition=np.array([v[2] for v in vals], dtype=np.float32),
    )
