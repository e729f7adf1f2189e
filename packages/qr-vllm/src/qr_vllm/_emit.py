"""Record emission: a step's outcome handed to the records logger as one `StepRecords`.

The step builds no object per token: it passes arrays for its rows (the values
of a sampled step, one `Column` each, or the stop tokens of a failed one) and the
fetch's provenance; the logger's writer thread makes the records.
"""

from __future__ import annotations

import time

import numpy as np
from qr_entropy import EntropySource, Provenance

from qr_vllm._failure import stop_tokens
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import RowSet
from qr_vllm._records import Column, RecordStatus, StepRecords

__all__ = ["RecordEmitter"]


class RecordEmitter:
    """Turn a step's rows into `StepRecords` for the logger.

    Args:
        sampling_logger: Where the records go.
        runner: ``v1`` or ``v2``, copied into records.
        source: The step's source, named in the records of a failed step.
        enabled: False on a tensor-parallel follower: the leader writes the group's records.
    """

    def __init__(
        self, sampling_logger: SamplingLogger, runner: str, source: EntropySource, *, enabled: bool
    ) -> None:
        self.sampling_logger = sampling_logger
        self.runner = runner
        self.source = source
        self.enabled = enabled

    def sampled(self, rows: RowSet, values: np.ndarray, prov: Provenance, latency_ns: int) -> None:
        """Records of rows sampled with entropy; ``values`` has one `Column` each."""
        self._emit(
            rows, values, values[:, Column.TOKEN_ID].astype(np.int64), prov, latency_ns=latency_ns
        )

    def failed(self, rows: RowSet, error: str) -> None:
        """Records of failed rows: each with its request's stop token (-1: none)."""
        self._emit(rows, None, stop_tokens(rows.states), None, status="failed", error=error)

    def _emit(
        self,
        rows: RowSet,
        values: np.ndarray | None,
        token_ids: np.ndarray,
        prov: Provenance | None,
        *,
        latency_ns: int = 0,
        status: RecordStatus = "ok",
        error: str = "",
    ) -> None:
        if not self.enabled:
            return
        states = rows.states
        seqs = np.fromiter((s.sequence_number() for s in states), dtype=np.int64, count=len(states))
        now = time.time_ns()
        if prov is not None:
            generated = now - (time.monotonic_ns() - prov.generated_at_ns)
            source, fallback, reason = prov.source, prov.is_fallback, prov.fallback_reason
            health, device_id = str(prov.health.value), prov.device_id
        else:
            generated, source, fallback, reason = 0, self.source.name, False, ""
            health, device_id = "not_tested", ""
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
            )
        )
