"""Record emission: a step's outcome handed to the records logger as one `StepRecords`.

The step builds no object per token: it passes arrays for its rows (the values
of a sampled step, one `Column` each, or the stop tokens of a failed one) and the
fetch's provenance; the logger's writer thread makes the records.

On an accelerator the step's statistics (token, rank, probability, candidates,
temperature, entropy) are still on their way to the host when the step ends: a
non-blocking copy into a pinned ring slot, with an event (`qr_vllm._device.HostRing`).
Then the emitter's own thread (``qr-records``) waits for that event, completes the
values and hands the step to the logger, so the engine thread never waits for the
device (see ARCHITECTURE.md, design note "Host syncs"). Every step of such an
emitter goes through that thread, so records keep step order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from qr_entropy import EntropySource, Provenance

from qr_vllm._failure import stop_tokens
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import RowSet
from qr_vllm._records import DEVICE_COLUMNS, Column, RecordStatus, StepRecords

__all__ = ["LEFT_TO_VLLM", "PendingStats", "RecordEmitter", "StepTimes"]

#: Appended to the error of a failed row that had no stop token to be ended with.
LEFT_TO_VLLM = (
    "; the request has no stop token, so vLLM's own sampler chose this token (not the "
    "configured entropy)"
)


class PendingStats(Protocol):
    """A step's `DEVICE_COLUMNS` statistics on their way to the host."""

    def wait(self) -> np.ndarray:
        """The statistics, once they are on the host (waits for the device)."""


class StepTimes:
    """Monotonic times of a step's fetch: logits seen ready, bytes requested."""

    __slots__ = ("logits_ready_ns", "requested_ns")

    def __init__(self, logits_ready_ns: int = 0, requested_ns: int = 0) -> None:
        self.logits_ready_ns = logits_ready_ns
        self.requested_ns = requested_ns


class RecordEmitter:
    """Turn a step's rows into `StepRecords` for the logger.

    Args:
        sampling_logger: Where the records go.
        runner: ``v1`` or ``v2``, copied into records.
        source: The step's source, named in the records of a failed step.
        enabled: False on a tensor-parallel follower: the leader writes the group's records.
        deferred: Hand the steps to the logger on the emitter's own thread (accelerators).
    """

    def __init__(
        self,
        sampling_logger: SamplingLogger,
        runner: str,
        source: EntropySource,
        *,
        enabled: bool,
        deferred: bool = False,
    ) -> None:
        self.sampling_logger = sampling_logger
        self.runner = runner
        self.source = source
        self.enabled = enabled
        self.deferred = deferred
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sampled(
        self,
        rows: RowSet,
        values: np.ndarray,
        prov: Provenance,
        latency_ns: int,
        *,
        sequence_numbers: np.ndarray | None = None,
        times: StepTimes | None = None,
        pending: PendingStats | None = None,
    ) -> None:
        """Records of rows sampled with entropy; ``values`` has one `Column` each.

        With ``pending``, its statistics fill the `DEVICE_COLUMNS` once they reach
        the host (on the emitter's thread).
        """
        if not self.enabled:
            return
        seqs = self._sequence_numbers(rows, sequence_numbers)
        now, mono = time.time_ns(), time.monotonic_ns()

        def emit() -> None:
            if pending is not None:
                values[:, DEVICE_COLUMNS] = pending.wait()
            tokens = values[:, Column.TOKEN_ID].astype(np.int64)
            self._emit(
                rows,
                seqs,
                (now, mono),
                values,
                tokens,
                prov=prov,
                latency_ns=latency_ns,
                times=times,
            )

        self._run(emit)

    def failed(
        self, rows: RowSet, error: str, *, sequence_numbers: np.ndarray | None = None
    ) -> None:
        """Records of failed rows: each with the stop token forced to end its request.

        A row whose request has no stop token was left to vLLM's own sampler: its
        record says so in ``error`` and has ``token_id`` null (the plugin does not
        learn which token vLLM chose).
        """
        if not self.enabled:
            return
        seqs = self._sequence_numbers(rows, sequence_numbers)
        clock = (time.time_ns(), time.monotonic_ns())
        tokens = stop_tokens(rows.states)
        parts = [(rows, seqs, tokens, error)]
        if not bool((tokens >= 0).all()):
            parts = []
            for keep, why in ((tokens >= 0, error), (tokens < 0, error + LEFT_TO_VLLM)):
                idx = np.flatnonzero(keep)
                if idx.size:
                    sub = RowSet(
                        rows.rows[idx], tuple(rows.states[i] for i in idx), rows.slot_ids[idx]
                    )
                    parts.append((sub, seqs[idx], tokens[idx], why))

        def emit() -> None:
            for part, part_seqs, part_tokens, why in parts:
                self._emit(
                    part, part_seqs, clock, None, part_tokens, prov=None, status="failed", error=why
                )

        self._run(emit)

    def flush(self) -> None:
        """Wait until every step handed over so far is with the logger."""
        if self._thread is not None:
            self._jobs.join()

    def close(self) -> None:
        """Flush, then stop the emitter's thread (a later step starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    # --- internals ---------------------------------------------------------------

    def _run(self, job: Callable[[], None]) -> None:
        if not self.deferred:
            job()
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="qr-records", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception:  # a record never takes the engine down
                import logging  # noqa: PLC0415

                logging.getLogger("qr_sampler").exception("qr-sampler could not emit records")
            finally:
                self._jobs.task_done()

    @staticmethod
    def _sequence_numbers(rows: RowSet, given: np.ndarray | None) -> np.ndarray:
        # Read on the engine thread: the requests' state moves on with the next step.
        if given is not None:
            return np.asarray(given, dtype=np.int64)
        states = rows.states
        return np.fromiter((s.sequence_number() for s in states), dtype=np.int64, count=len(states))

    def _emit(
        self,
        rows: RowSet,
        seqs: np.ndarray,
        clock: tuple[int, int],
        values: np.ndarray | None,
        token_ids: np.ndarray,
        *,
        prov: Provenance | None,
        latency_ns: int = 0,
        status: RecordStatus = "ok",
        error: str = "",
        times: StepTimes | None = None,
    ) -> None:
        # When the step ended, in Unix and in monotonic time (read on the engine thread).
        now, mono = clock
        offset = now - mono
        if prov is not None:
            generated = prov.generated_at_ns + offset
            source, fallback, reason = prov.source, prov.is_fallback, prov.fallback_reason
            health, device_id = str(prov.health.value), prov.device_id
        else:
            generated, source, fallback, reason = 0, self.source.name, False, ""
            health, device_id = "not_tested", ""
        ready = requested = 0
        if times is not None and times.requested_ns:
            # One offset for both, so their order is kept.
            ready, requested = times.logits_ready_ns + offset, times.requested_ns + offset
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
                logits_ready_ns=int(ready),
                entropy_requested_ns=int(requested),
            )
        )
