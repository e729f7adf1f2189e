"""Record emission: a step's outcome handed to the records logger as one `StepRecords`.

The step builds no object per token: it passes arrays for its rows (the values
of a sampled step, one `Column` each, or the stop tokens of a failed one) and the
fetch's provenance; the logger's writer thread makes the records. Each
token's ``entropy_digest`` and the server's ids of its bytes come from the
block's provenance (see ARCHITECTURE.md, design note "Audit chain").

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
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from qr_entropy import EntropyBlock, EntropySource, Provenance, row_digest

from qr_vllm._failure import stop_tokens
from qr_vllm._fetch import Fetched
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import BatchPlan, EntropyPlan, RowSet
from qr_vllm._records import DEVICE_COLUMNS, Column, EngineIdentity, RecordStatus, StepRecords

__all__ = [
    "LEFT_TO_VLLM",
    "PendingStats",
    "ReadOnce",
    "RecordEmitter",
    "StepTimes",
    "rows_of",
]

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
        engine: The writer's identity, in every record (a fresh one when None).
    """

    def __init__(
        self,
        sampling_logger: SamplingLogger,
        runner: str,
        source: EntropySource,
        *,
        enabled: bool,
        deferred: bool = False,
        engine: EngineIdentity | None = None,
    ) -> None:
        self.sampling_logger = sampling_logger
        self.runner = runner
        self.source = source
        self.enabled = enabled
        self.deferred = deferred
        self.engine = engine if engine is not None else EngineIdentity.new(None)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sampled(
        self,
        rows: RowSet,
        values: np.ndarray,
        block: EntropyBlock,
        plan: EntropyPlan,
        latency_ns: int,
        *,
        sequence_numbers: np.ndarray | None = None,
        times: StepTimes | None = None,
        pending: PendingStats | None = None,
        clock: tuple[int, int] | None = None,
    ) -> None:
        """Records of rows sampled with entropy; ``values`` has one `Column` each.

        With ``pending``, its statistics fill the `DEVICE_COLUMNS` once they reach
        the host (on the emitter's thread). ``clock`` (Unix ns, monotonic ns) is
        when the step chose its tokens, shared by every named source's rows of one
        step (None: now).
        """
        if not self.enabled:
            return
        seqs = self._sequence_numbers(rows, sequence_numbers)
        now, mono = clock if clock is not None else (time.time_ns(), time.monotonic_ns())

        def emit() -> None:
            if pending is not None:
                values[:, DEVICE_COLUMNS] = pending.wait()
            tokens = values[:, Column.TOKEN_ID].astype(np.int64)
            digests, ids = _token_bytes(block, plan, len(rows.states))
            self._emit(
                rows,
                seqs,
                (now, mono),
                values,
                tokens,
                prov=block.provenance,
                latency_ns=latency_ns,
                times=times,
                digests=digests,
                sequence_ids=[i for i, _ in ids],
                server_generated_ns=[t for _, t in ids],
            )

        self._run(emit)

    def sampled_step(
        self,
        plan: BatchPlan,
        values: np.ndarray,
        fetches: Sequence[Fetched],
        positions: np.ndarray | None,
        *,
        pending: PendingStats | None,
        latency_ns: int,
    ) -> None:
        """The records of a step's sampled rows, one `sampled` per named source.

        ``positions`` (runner V2) are the logits rows' token indices from vLLM's state;
        ``latency_ns`` is the wait for the fetches, for sources that report none.
        """
        clock = (time.time_ns(), time.monotonic_ns())  # one choosing time for every source
        for group, fetched in zip(plan.sources, fetches, strict=True):
            part = values if group.positions is None else values[group.positions]
            self.sampled(
                group.rows,
                part,
                fetched.block,
                group.entropy,
                fetched.block.provenance.fetch_latency_ns or latency_ns,
                sequence_numbers=None if positions is None else positions[group.rows.rows],
                times=StepTimes(fetched.logits_ready_ns, fetched.requested_ns),
                pending=rows_of(pending, group.positions),
                clock=clock,
            )

    def failed(
        self,
        rows: RowSet,
        error: str,
        *,
        sequence_numbers: np.ndarray | None = None,
        health: str = "not_tested",
    ) -> None:
        """Records of failed rows: each with the stop token forced to end its request.

        A row whose request has no stop token was left to vLLM's own sampler: its
        record says so in ``error`` and has ``token_id`` null (the plugin does not
        learn which token vLLM chose).

        ``health`` is ``failed`` when a health test of the primary's bytes caused it.
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
                    part,
                    part_seqs,
                    clock,
                    None,
                    part_tokens,
                    prov=None,
                    status="failed",
                    error=why,
                    health=health,
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
        health: str = "not_tested",
        digests: Sequence[str] = (),
        sequence_ids: Sequence[int] = (),
        server_generated_ns: Sequence[int] = (),
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
            device_id = ""
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
                engine=self.engine,
                digests=digests,
                sequence_ids=sequence_ids,
                server_generated_ns=server_generated_ns,
            )
        )


def _token_bytes(
    block: EntropyBlock, plan: EntropyPlan, count: int
) -> tuple[Sequence[str], list[tuple[int, int]]]:
    """Each sampled row's digest and its bytes' (sequence id, generation time)."""
    prov = block.provenance
    if plan.uniform and len(prov.row_digests) == count:
        # Row i of the block chose sampled row i's token.
        return prov.row_digests, [prov.row_source_ids(i) for i in range(count)]
    # Rows of several widths share one fetch of one row: each token's digest is of its
    # own stretch (it names the bytes; a server's log, which digests the whole request,
    # cannot confirm it).
    flat = block.data.reshape(-1)
    out = [""] * count
    for group in plan.groups:
        width = group.row_bytes
        for k, position in enumerate(group.positions.tolist()):
            start = group.byte_offset + k * width
            out[position] = row_digest(flat[start : start + width].data)
    return out, [prov.row_source_ids(0)] * count


class ReadOnce:
    """A step's pending statistics shared by its named sources: the first wait reads
    them (reading a ring slot frees it), later waits get the same values."""

    def __init__(self, pending: PendingStats) -> None:
        self._pending = pending
        self._value: np.ndarray | None = None
        self._lock = threading.Lock()

    def wait(self) -> np.ndarray:
        with self._lock:
            if self._value is None:
                self._value = self._pending.wait()
            return self._value


def rows_of(pending: PendingStats | None, positions: np.ndarray | None) -> PendingStats | None:
    """The pending statistics of some rows of a step (all of them when ``positions`` is None)."""
    if pending is None or positions is None:
        return pending
    return _PendingRows(pending, positions)


class _PendingRows:
    def __init__(self, pending: PendingStats, positions: np.ndarray) -> None:
        self._pending, self._positions = pending, positions

    def wait(self) -> np.ndarray:
        rows: np.ndarray = self._pending.wait()[self._positions]
        return rows
