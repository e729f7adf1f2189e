"""Helpers that build `StepRecords` for the records, sink and logger tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qr_vllm._records import N_VALUE_COLUMNS, Column, EngineIdentity, RequestInfo, StepRecords

ENGINE = EngineIdentity("0" * 32, None)


def info(
    serial: int = 1, *, full: bool = False, diagnostic: bool = False, source: str = "default"
) -> RequestInfo:
    return RequestInfo(
        request_serial=serial,
        session="sess",
        label=f"label-{serial}",
        config_hash="0123456789abcdef",
        temperature_strategy="fixed",
        signal_amplifier="zscore_mean",
        source=source,
        sample_count=16,
        v_bytes=0,
        top_k=50,
        top_p=0.9,
        min_p=0.0,
        log_full=full,
        diagnostic=diagnostic,
    )


def step(
    rows: int = 2,
    *,
    start_seq: int = 0,
    status: str = "ok",
    fallback: bool = False,
    full: bool = False,
    diagnostic: bool = False,
    qr_source: str | Sequence[str] = "default",
) -> StepRecords:
    """``rows`` records; ``qr_source``: the rows' named source (one, or one per row)."""
    named = [qr_source] * rows if isinstance(qr_source, str) else list(qr_source)
    values = None
    tokens = np.full(rows, 7, dtype=np.int64)
    if status == "ok":
        values = np.zeros((rows, N_VALUE_COLUMNS), dtype=np.float64)
        values[:, Column.TOKEN_ID] = np.arange(rows) + 100
        values[:, Column.TOKEN_RANK] = 1
        values[:, Column.TOKEN_PROB] = 0.25
        values[:, Column.NUM_CANDIDATES] = 10
        values[:, Column.TEMPERATURE] = 0.7
        values[:, Column.SHANNON_ENTROPY] = 2.5
        values[:, Column.U] = 0.5
        values[:, Column.Z_SCORE] = 0.0
        values[:, Column.SAMPLE_MEAN] = 127.5
        tokens = values[:, Column.TOKEN_ID].astype(np.int64)
    return StepRecords(
        runner="v1",
        requests=tuple(
            info(i + 1, full=full, diagnostic=diagnostic, source=named[i]) for i in range(rows)
        ),
        slots=np.arange(rows, dtype=np.int64),
        sequence_numbers=np.full(rows, start_seq, dtype=np.int64),
        values=values,
        token_ids=tokens,
        status="ok" if status == "ok" else "failed",
        error="" if status == "ok" else "EntropyUnavailableError: down",
        entropy_source="system" if fallback else "mock_uniform",
        is_fallback=fallback,
        fallback_reason="primary down" if fallback else "",
        health="not_tested",
        device_id="",
        fetch_latency_ns=1_500_000,
        generated_at_ns=1_700_000_000_000_000_000,
        timestamp_ns=1_700_000_000_000_000_001,
        engine=ENGINE,
        digests=tuple(f"{i:032x}" for i in range(rows)) if status == "ok" else (),
    )
