"""Per-token records: what was chosen, how, and from which entropy.

The hot path does not build one object per token: it hands a `StepRecords`
(a few arrays for the whole batch plus the step's provenance) to the logger,
and the records writer thread turns it into `TokenSamplingRecord` objects and
JSON lines off the hot path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEVICE_COLUMNS",
    "N_VALUE_COLUMNS",
    "Column",
    "RecordStatus",
    "RequestInfo",
    "StepRecords",
    "TokenSamplingRecord",
]

RecordStatus = Literal["ok", "failed"]


class Column(IntEnum):
    """The columns of `StepRecords.values`, by name (a column's value is its index)."""

    TOKEN_ID = 0
    TOKEN_RANK = 1
    TOKEN_PROB = 2
    NUM_CANDIDATES = 3
    TEMPERATURE = 4
    SHANNON_ENTROPY = 5
    U = 6
    Z_SCORE = 7
    SAMPLE_MEAN = 8


#: Columns of `StepRecords.values`.
N_VALUE_COLUMNS = len(Column)
#: The columns the step computes on the device (and copies back at once): the first
#: ones, in `Column` order; u, z-score and mean are computed on the host.
DEVICE_COLUMNS = slice(Column.TOKEN_ID, Column.SHANNON_ENTROPY + 1)


@dataclass(frozen=True, slots=True)
class TokenSamplingRecord:
    """How one token was chosen: one line of the records file.

    Attributes:
        request_serial: Number of the request within this engine process (1, 2, ...),
            in the order requests entered the batch.
        sequence_number: Index of this token among the request's sampled tokens (0-based).
        slot: The request's batch slot when the token was chosen.
        session: The request's ``qr_session`` tag.
        label: The request's ``qr_label`` tag.
        status: ``ok``, or ``failed`` when no entropy could be had and the request
            was ended (``QR_FALLBACK_MODE=error``).
        token_id: The token emitted (for a failed request, the stop token forced to
            end it; null when the request had no stop token and vLLM's own sampler
            chose the token, which ``error`` then says).
        token_rank: Rank of the token in the filtered distribution (0 = most probable).
        token_prob: Its probability after temperature, filters and renormalisation.
        num_candidates: Tokens left after top-k, top-p and min-p.
        u: The uniform value that chose the token.
        z_score: z of the bytes' mean under the null hypothesis.
        sample_mean: Mean of the bytes.
        sample_count: Entropy bytes used for this token.
        temperature: Temperature applied.
        shannon_entropy: Natural-log entropy of the unscaled distribution.
        top_k: The request's top-k (0: off).
        top_p: The request's top-p (1.0: off).
        min_p: The request's min-p (0.0: off).
        temperature_strategy: Name of the temperature strategy.
        signal_amplifier: Name of the amplifier.
        entropy_source: Name of the source that actually produced the bytes.
        is_fallback: True when the bytes came from the fallback source.
        fallback_reason: The primary source's error when ``is_fallback``.
        health: Health-test status of the bytes (``ok``, ``failed``, ``not_tested``).
        device_id: Device that produced the bytes, when the source reports one.
        entropy_fetch_ms: Wall time of the fetch that produced the bytes (whole batch).
        entropy_generated_at_ns: When the bytes were produced, Unix time in ns.
        timestamp_ns: When the token was chosen, Unix time in ns.
        config_hash: Hash of the request's resolved configuration.
        runner: vLLM model runner interface that called the processor (``v1``/``v2``).
        error: Why the request failed (empty when ``status`` is ``ok``).
        logits_ready_ns: When the fetch thread saw the step's logits exist on their
            device, Unix time in ns (0: no fetch).
        entropy_requested_ns: When it then asked the source for the bytes, Unix
            time in ns (0: no fetch); never before ``logits_ready_ns``.
    """

    request_serial: int
    sequence_number: int
    slot: int
    session: str
    label: str
    status: RecordStatus
    token_id: int | None
    token_rank: int | None
    token_prob: float | None
    num_candidates: int | None
    u: float | None
    z_score: float | None
    sample_mean: float | None
    sample_count: int
    temperature: float | None
    shannon_entropy: float | None
    top_k: int
    top_p: float
    min_p: float
    temperature_strategy: str
    signal_amplifier: str
    entropy_source: str
    is_fallback: bool
    fallback_reason: str
    health: str
    device_id: str
    entropy_fetch_ms: float
    entropy_generated_at_ns: int
    timestamp_ns: int
    config_hash: str
    runner: str
    error: str
    logits_ready_ns: int = 0
    entropy_requested_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (field order preserved)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSamplingRecord:
        """Rebuild a record from `to_dict` output (for example one parsed JSON line)."""
        # Files written before the two timing fields lack them: their defaults apply.
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What stays the same for every token of one request (built once, when it is added)."""

    request_serial: int
    session: str
    label: str
    config_hash: str
    temperature_strategy: str
    signal_amplifier: str
    sample_count: int
    top_k: int
    top_p: float
    min_p: float
    log_full: bool
    diagnostic: bool


@dataclass(frozen=True, slots=True)
class StepRecords:
    """The records of one decode step for a group of rows, as arrays.

    Attributes:
        runner: ``v1`` or ``v2``.
        requests: Per row, the request's constant information.
        slots: Per row, the batch slot.
        sequence_numbers: Per row, the token's index within its request.
        values: ``(rows, N_VALUE_COLUMNS)`` float64, one `Column` each: token id,
            rank, probability, candidates, temperature, entropy, u, z, mean. None
            for a failed step.
        token_ids: Per row, the token emitted (for failed rows, the forced stop token;
            -1 for a row left to vLLM, written as null).
        status: ``ok`` or ``failed``.
        error: The failure (empty when ok).
        entropy_source: Source that produced the bytes.
        is_fallback: Whether that was the fallback source.
        fallback_reason: The primary's error when falling back.
        health: Health status of the bytes.
        device_id: Reported device.
        fetch_latency_ns: Wall time of the fetch.
        generated_at_ns: When the bytes were produced (Unix ns).
        timestamp_ns: When the step's tokens were chosen (Unix ns).
        logits_ready_ns: When the fetch thread saw the logits exist (Unix ns; 0: no fetch).
        entropy_requested_ns: When it asked for the bytes (Unix ns; 0: no fetch).
    """

    runner: str
    requests: Sequence[RequestInfo]
    slots: np.ndarray
    sequence_numbers: np.ndarray
    values: np.ndarray | None
    token_ids: np.ndarray
    status: RecordStatus
    error: str
    entropy_source: str
    is_fallback: bool
    fallback_reason: str
    health: str
    device_id: str
    fetch_latency_ns: int
    generated_at_ns: int
    timestamp_ns: int
    logits_ready_ns: int = 0
    entropy_requested_ns: int = 0

    def __len__(self) -> int:
        return len(self.requests)

    def records(self) -> list[TokenSamplingRecord]:
        """One `TokenSamplingRecord` per row."""
        out = []
        values = self.values.tolist() if self.values is not None else None
        slots = self.slots.tolist()
        seqs = self.sequence_numbers.tolist()
        tokens = self.token_ids.tolist()
        fetch_ms = self.fetch_latency_ns / 1e6
        for i, info in enumerate(self.requests):
            row = values[i] if values is not None else None
            out.append(
                TokenSamplingRecord(
                    request_serial=info.request_serial,
                    sequence_number=int(seqs[i]),
                    slot=int(slots[i]),
                    session=info.session,
                    label=info.label,
                    status=self.status,
                    token_id=int(tokens[i]) if tokens[i] >= 0 else None,
                    token_rank=None if row is None else int(row[_RANK]),
                    token_prob=None if row is None else _finite(row[_PROB]),
                    num_candidates=None if row is None else int(row[_CANDIDATES]),
                    u=None if row is None else _finite(row[_U]),
                    z_score=None if row is None else _finite(row[_Z]),
                    sample_mean=None if row is None else _finite(row[_MEAN]),
                    sample_count=info.sample_count if row is not None else 0,
                    temperature=None if row is None else _finite(row[_TEMPERATURE]),
                    shannon_entropy=None if row is None else _finite(row[_ENTROPY]),
                    top_k=info.top_k,
                    top_p=info.top_p,
                    min_p=info.min_p,
                    temperature_strategy=info.temperature_strategy,
                    signal_amplifier=info.signal_amplifier,
                    entropy_source=self.entropy_source,
                    is_fallback=self.is_fallback,
                    fallback_reason=self.fallback_reason,
                    health=self.health,
                    device_id=self.device_id,
                    entropy_fetch_ms=fetch_ms,
                    entropy_generated_at_ns=self.generated_at_ns,
                    timestamp_ns=self.timestamp_ns,
                    config_hash=info.config_hash,
                    runner=self.runner,
                    error=self.error,
                    logits_ready_ns=self.logits_ready_ns,
                    entropy_requested_ns=self.entropy_requested_ns,
                )
            )
        return out

    def to_jsonl(self) -> bytes:
        """The step's records as JSON Lines (one line per token, newline-terminated)."""
        lines = [json.dumps(r.to_dict(), separators=(",", ":")) for r in self.records()]
        return ("\n".join(lines) + "\n").encode() if lines else b""


# Plain ints for the writer's per-record loop (an enum member is a slower lookup).
_RANK, _PROB, _CANDIDATES = (
    int(Column.TOKEN_RANK),
    int(Column.TOKEN_PROB),
    int(Column.NUM_CANDIDATES),
)
_TEMPERATURE, _ENTROPY = int(Column.TEMPERATURE), int(Column.SHANNON_ENTROPY)
_U, _Z, _MEAN = int(Column.U), int(Column.Z_SCORE), int(Column.SAMPLE_MEAN)


def _finite(value: float) -> float | None:
    # JSON has no NaN or infinity; a non-finite value is reported as missing.
    return value if math.isfinite(value) else None
