"""Record emission: a step's outcome handed to the records logger as one `StepRecords`.

The step builds no object per token: it passes arrays for its rows (the values
of a sampled step, one `Column` each, or the stop tokens of a failed one) and the
fetch's provenance; the logger's writer thread makes the records. Each
token's ``entropy_digest`` and the server's ids of its bytes come from the
block's provenance (see ARCHITECTURE.md, design note "Audit chain").
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from qr_entropy import EntropyBlock, EntropySource, Provenance, row_digest

from qr_vllm._failure import stop_tokens
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import EntropyPlan, RowSet
from qr_vllm._records import Column, EngineIdentity, RecordStatus, StepRecords

__all__ = ["RecordEmitter"]


class RecordEmitter:
    """Turn a step's rows into `StepRecords` for the logger.

    Args:
        sampling_logger: Where the records go.
        runner: ``v1`` or ``v2``, copied into records.
        source: The step's source, named in the records of a failed step.
        enabled: False on a tensor-parallel follower: the leader writes the group's records.
        engine: The writer's identity, in every record.
    """

    def __init__(
        self,
        sampling_logger: SamplingLogger,
        runner: str,
        source: EntropySource,
        *,
        enabled: bool,
        engine: EngineIdentity,
    ) -> None:
        self.sampling_logger = sampling_logger
        self.runner = runner
        self.source = source
        self.enabled = enabled
        self.engine = engine

    def sampled(
        self,
        rows: RowSet,
        values: np.ndarray,
        block: EntropyBlock,
        plan: EntropyPlan,
        latency_ns: int,
        *,
        timestamp_ns: int = 0,
    ) -> None:
        """Records of rows sampled with entropy; ``values`` has one `Column` each.

        ``timestamp_ns`` (Unix ns) is when the step chose its tokens, shared by the
        records of every source's rows of one step (0: now).
        """
        if not self.enabled:
            return
        prov = block.provenance
        count = len(rows.states)
        if plan.uniform and len(prov.row_digests) == count:
            # Row i of the block chose sampled row i's token.
            digests: Sequence[str] = prov.row_digests
            ids = [prov.row_source_ids(i) for i in range(count)]
        else:
            # Rows of several widths share one fetch of one row: each token's digest is
            # of its own stretch (it names the bytes; a server's log, which digests the
            # whole request, cannot confirm it).
            digests = _stretch_digests(block.data, plan, count)
            ids = [prov.row_source_ids(0)] * count
        self._emit(
            rows,
            values,
            values[:, Column.TOKEN_ID].astype(np.int64),
            prov,
            latency_ns=latency_ns,
            timestamp_ns=timestamp_ns,
            digests=digests,
            sequence_ids=[i for i, _ in ids],
            server_generated_ns=[t for _, t in ids],
        )

    def failed(self, rows: RowSet, error: str, *, health: str = "not_tested") -> None:
        """Records of failed rows: each with its request's stop token (-1: none).

        ``health`` is ``failed`` when a health test of the primary's bytes caused it.
        """
        self._emit(
            rows, None, stop_tokens(rows.states), None, status="failed", error=error, health=health
        )

    def _emit(
        self,
        rows: RowSet,
        values: np.ndarray | None,
        token_ids: np.ndarray,
        prov: Provenance | None,
        *,
        latency_ns: int = 0,
        timestamp_ns: int = 0,
        status: RecordStatus = "ok",
        error: str = "",
        health: str = "not_tested",
        digests: Sequence[str] = (),
        sequence_ids: Sequence[int] = (),
        server_generated_ns: Sequence[int] = (),
    ) -> None:
        if not self.enabled:
            return
        states = rows.states
        seqs = np.fromiter((s.sequence_number() for s in states), dtype=np.int64, count=len(states))
        now = timestamp_ns or time.time_ns()
        if prov is not None:
            generated = now - (time.monotonic_ns() - prov.generated_at_ns)
            source, fallback, reason = prov.source, prov.is_fallback, prov.fallback_reason
            health, device_id = str(prov.health.value), prov.device_id
        else:
            generated, source, fallback, reason = 0, self.source.name, False, ""
            device_id = ""
        self.sampling_logger.log_step(
            StepRecords(
                runner=self.runner,
                requests=rows.infos,
                slots=rows.slot_ids,
                sequence_numbers=seqs,
                values=values,
                token_ids=token_ids,
                status=status,
                error=error,
                entropy_source=source,
                is_fallback=fallback,
                fallback_reason=reason,
                health=health,
                device_id=device_id,
                fetch_latency_ns=int(latency_ns),
                generated_at_ns=int(generated),
                timestamp_ns=now,
                engine=self.engine,
                digests=digests,
                sequence_ids=sequence_ids,
                server_generated_ns=server_generated_ns,
            )
        )


def _stretch_digests(data: np.ndarray, plan: EntropyPlan, count: int) -> list[str]:
    """The digest of each sampled row's own stretch of a one-row block."""
    flat = data.reshape(-1)
    out = [""] * count
    for group in plan.groups:
        width = group.row_bytes
        for k, position in enumerate(group.positions.tolist()):
            start = group.byte_offset + k * width
            out[position] = row_digest(flat[start : start + width].data)
    return out
