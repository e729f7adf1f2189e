"""The step: `BatchSampler` chooses every qr-sampled row's token, for both vLLM runners.

One call of `BatchSampler.sample` per decode step:

1. (runner V1) the request's repetition / frequency / presence penalties, with
   vLLM's own penalty function, on the rows that ask for them (`qr_vllm._penalties`);
2. **one** entropy fetch per named source in use (its rows × row bytes), each on
   its source's fetch thread (`qr_vllm._fetch`), all in flight together; each
   waits for the event recorded when the logits were handed over, so the bytes
   are requested only once the logits exist on their device; meanwhile:
3. temperature and Shannon entropy for every row, through qr_core, on the
   logits' device (one call per distinct strategy), and the batched selection
   with per-row top-k / top-p / min-p up to its last step (`prepare_batch`);
4. batched amplification of the fetched block to one u per row (host, numpy),
   and u to the device (pinned, non-blocking where the device is not the CPU);
5. the selection's last step, the inverse CDF at u (on an accelerator the step's
   one host sync: whether a row needs a wider head);
6. in-place one-hot forcing of the rows;
7. one (rows, 6) copy back to the host for the records: on an accelerator a
   non-blocking copy into a pinned ring slot that the records thread waits for
   (`qr_vllm._device.HostRing`, `qr_vllm._emit`).

The rows' plan (`qr_vllm._plan`) and its tensors (`qr_vllm._device`) are built
when the batch changes, not per step. Under tensor parallelism rank 0 leads and
the other ranks follow (`qr_vllm._tp`); a step that cannot sample fails its
requests, never the engine (`qr_vllm._failure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from qr_core import TokenSelector, sync_free
from qr_entropy import EntropySource, EntropyUnavailableError, HealthTestFailure

from qr_vllm import _failure
from qr_vllm._device import (
    DevicePlan,
    HostRing,
    StepBuffers,
    as_tensor,
    force,
    greedy,
    logits_event,
    step_stats,
    warm_up,
)
from qr_vllm._emit import ReadOnce, RecordEmitter
from qr_vllm._fetch import ReadyEvent, SourceFetchers, amplify_sources, apply_replay
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import BatchPlan, build_plan, plan_key
from qr_vllm._records import DEVICE_COLUMNS, N_VALUE_COLUMNS, Column, EngineIdentity
from qr_vllm._slots import SlotTable
from qr_vllm._tp import exchange_for

logger = logging.getLogger("qr_sampler")

__all__ = ["BatchSampler"]


class BatchSampler:
    """Choose the token of every qr-sampled row of a batch with fresh entropy.

    Args:
        source: The entropy source (already wrapped in its fallback, if any).
        sampling_logger: Where each step's records go.
        device: The logits' device.
        pin_memory: Use pinned host buffers for the u vector.
        runner: ``v1`` or ``v2``, copied into records.
        tp_group: vLLM's tensor-parallel group coordinator when it has more than one
            rank (see `qr_vllm._tp`), else None.
        device_path: Take the accelerator's code path even on the CPU (tests count
            the host syncs of that path on CPU tensors; see ARCHITECTURE.md, design
            note "Host syncs").
        sync_allowed: A context manager factory under which the step's deliberate
            host syncs run (vLLM's ``gpu_sync_allowed``, for ``VLLM_GPU_SYNC_CHECK``).
        engine: The records' writer identity; sources: the named sources of ``QR_SOURCES``.
    """

    def __init__(
        self,
        source: EntropySource,
        sampling_logger: SamplingLogger,
        device: torch.device,
        pin_memory: bool,
        runner: str,
        *,
        tp_group: Any | None = None,
        device_path: bool = False,
        sync_allowed: Callable[[], AbstractContextManager[Any]] = nullcontext,
        engine: EngineIdentity | None = None,
        sources: Mapping[str, EntropySource] | None = None,
    ) -> None:
        self.source = source
        self._tp = exchange_for(tp_group)
        #: True on a tensor-parallel rank other than 0: no fetch, no records, u from rank 0.
        self.follower = self._tp is not None and self._tp.follower
        self.sampling_logger = sampling_logger
        self.device = device
        self.runner = runner
        #: The qr-sampled requests by batch slot (the processor applies vLLM's changes).
        self.slots = SlotTable()
        self.selector = TokenSelector()
        self.failed_requests = _failure.FailedRequests()  # by named source
        self._buffers = StepBuffers(device, pin_memory, device_path=device_path)
        #: True when the step takes the accelerator's path (no host reads of device values).
        self.device_path = self._buffers.device_path
        self._sync_allowed = sync_allowed
        #: Where the step's deliberate host syncs run (vLLM's ``gpu_sync_allowed``).
        self.sync_allowed = sync_allowed
        self._records = RecordEmitter(
            sampling_logger,
            runner,
            source,
            enabled=not self.follower,
            deferred=self.device_path,
            engine=engine,
        )
        self._ring = HostRing(device, pin_memory)
        self._fetchers = SourceFetchers(source, sources or {})
        self._plan: DevicePlan | None = None
        self._plan_version = -1
        self._positions: np.ndarray | None = None
        #: Steps that rebuilt the plan (batch changes, which may sync) and steps in all.
        self.plan_steps = 0
        self.steps = 0

    def sample(
        self,
        logits: torch.Tensor,
        row_slots: np.ndarray | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        """Force every qr-sampled row of ``logits`` to one-hot on its chosen token, in place.

        Args:
            logits: ``(rows, vocab)`` float logits of this step.
            row_slots: The slot of each row (runner V2; -1: a row to leave alone);
                None when row i is slot i (V1).
            positions: Per row, the index of the token chosen now among its
                request's output tokens (runner V2, from vLLM's sequence lengths);
                None: each request's own count (V1).
        """
        if int(logits.shape[0]) == 0 or not self.slots:
            return
        # Mark when the logits were handed over: the fetch waits for this, not the engine.
        ready = logits_event(logits)
        self.steps += 1
        self._positions = positions
        dev = self._plan_for(logits, row_slots)
        plan = dev.plan
        if plan.failed.size:
            with self._sync_allowed():
                self._force_failed(logits, dev)
        if plan.sampled.size == 0:
            return
        if self.follower:
            self._follow(logits, dev)
            return
        u: torch.Tensor | None = None
        try:
            u = self._lead(logits, dev, ready)
        except Exception as exc:
            # Nothing may take the shared engine down: see qr_vllm._failure.
            if not _failure.is_expected(exc):
                logger.exception("qr-sampler step failed unexpectedly; failing its requests")
            health = "failed" if isinstance(exc, HealthTestFailure) else "not_tested"
            self._fail(logits, dev, _failure.describe(exc), health)
            u = None
        if self._tp is not None:
            # Every step that samples rows broadcasts, failed or not: the followers wait for it.
            with self._sync_allowed():
                self._tp.send(u, plan.sampled.size, logits.device)

    def reserve(self, rows: int, vocab: int, dtype: torch.dtype) -> int:
        """Allocate the step's scratch for ``rows`` rows of ``vocab`` logits now; its bytes.

        Called at start-up with the engine's ``max_num_seqs``, so that the memory is
        held before vLLM measures what is left for its cache. On an accelerator one
        step's math also runs once on zero logits, so that qr_core's own scratch
        buffers exist too (their bytes are counted through the device's allocator).
        """
        self._buffers.ensure(rows, torch.empty((1, vocab), dtype=dtype, device=self.device))
        self._ring.reserve(rows)
        if not self.device_path:
            return self._buffers.nbytes() + self._ring.nbytes()
        probe = torch.zeros((rows, vocab), dtype=dtype, device=self.device)
        extra = warm_up(self.selector, probe)
        return self._buffers.nbytes() + self._ring.nbytes() + extra

    def flush_records(self) -> None:
        """Wait until every step's records are with the logger (accelerators defer them)."""
        self._records.flush()

    def close(self) -> None:
        """Stop the fetch thread (after the fetch in flight, if any) and the records thread."""
        self._fetchers.close()
        self._records.close()

    # --- the leader's and the followers' steps --------------------------------

    def _lead(self, logits: torch.Tensor, dev: DevicePlan, ready: ReadyEvent) -> torch.Tensor:
        """The leader's step (the only one without tensor parallelism); returns u on the device."""
        plan = dev.plan
        rows = plan.sampled.size

        # Just in time: one fetch per source in use, each asked for once ``ready`` fires,
        # while this thread queues all that does not need u, overlapping the round trip.
        started = time.monotonic_ns()
        pending = self._fetchers.start(plan, ready)
        with sync_free() if self.device_path else nullcontext():
            sub = self._rows_logits(logits, dev)
            temperature, entropy = self._temperature(sub, dev)
            prepared = self._prepare(sub, temperature, dev)
        fetches = [p.result() for p in pending]
        done = time.monotonic_ns()

        u, z, mean = amplify_sources(plan, [f.block for f in fetches])
        if plan.replay:
            apply_replay(u, plan, self._positions)
        u_dev = self._buffers.u_to_device(u, rows)
        if self.device_path:
            # The step's one host sync: whether some row needs a wider head.
            with sync_free(), self._sync_allowed():
                sel = prepared.select(u_dev)
        else:
            sel = prepared.select(u_dev)
        token_ids = as_tensor(sel.token_id, logits)
        force(logits, dev.rows, token_ids)

        values = np.empty((rows, N_VALUE_COLUMNS), dtype=np.float64)
        values[:, Column.U] = u
        values[:, Column.Z_SCORE] = z
        values[:, Column.SAMPLE_MEAN] = mean
        columns = (token_ids, sel.token_rank, sel.token_prob, sel.num_candidates)
        stats_copy = step_stats(
            [*(as_tensor(c, logits) for c in columns), temperature, entropy],
            values[:, DEVICE_COLUMNS],
            self._ring if self.device_path else None,
        )
        pending_stats = None if stats_copy is None else ReadOnce(stats_copy)
        latency = done - started
        self._records.sampled_step(
            plan, values, fetches, self._positions, pending=pending_stats, latency_ns=latency
        )
        return u_dev

    def _sequence_numbers(self, rows: np.ndarray) -> np.ndarray | None:
        """The rows' token indices from vLLM's state (runner V2), else None."""
        positions = self._positions
        return None if positions is None else positions[rows]

    def _follow(self, logits: torch.Tensor, dev: DevicePlan) -> None:
        """A follower's step: the leader's selection on the same logits, at the leader's u."""
        assert self._tp is not None
        prepared = None
        error = _failure.LEADER_FAILED
        try:
            sub = self._rows_logits(logits, dev)
            with sync_free() if self.device_path else nullcontext():
                temperature, _ = self._temperature(sub, dev)
                prepared = self._prepare(sub, temperature, dev)
        except Exception as exc:
            logger.exception("qr-sampler follower step failed unexpectedly; failing its requests")
            error = _failure.describe(exc)
        # Always receive: the leader broadcasts for every step that samples rows.
        with self._sync_allowed():
            u = self._tp.receive(dev.plan.sampled.size, logits.device)
        try:
            if prepared is None or u is None:
                raise EntropyUnavailableError(error)
            with sync_free() if self.device_path else nullcontext(), self._sync_allowed():
                sel = prepared.select(u)
            force(logits, dev.rows, as_tensor(sel.token_id, logits))
        except Exception as exc:
            self._fail(logits, dev, _failure.describe(exc))

    # --- pieces of the step ---------------------------------------------------

    def _rows_logits(self, logits: torch.Tensor, dev: DevicePlan) -> torch.Tensor:
        """The sampled rows' logits, with their penalties applied (runner V1)."""
        self._buffers.ensure(dev.plan.sampled.size, logits)
        sub = self._buffers.gather(logits, dev)
        if dev.penalties is not None:
            dev.penalties.apply(sub)
        return sub

    def _temperature(self, sub: torch.Tensor, dev: DevicePlan) -> tuple[torch.Tensor, torch.Tensor]:
        groups = dev.plan.temperature
        if len(groups) == 1:
            result = groups[0].strategy.compute_batch(sub)
            return greedy(as_tensor(result.temperature, sub)), as_tensor(
                result.shannon_entropy, sub
            )
        buffers = self._buffers
        assert buffers.temperature is not None
        assert buffers.entropy is not None
        rows = dev.plan.sampled.size
        t_out, h_out = buffers.temperature[:rows], buffers.entropy[:rows]
        for group, positions in zip(groups, dev.temperature_positions, strict=True):
            assert positions is not None
            result = group.strategy.compute_batch(sub.index_select(0, positions))
            t_out.index_copy_(0, positions, as_tensor(result.temperature, sub).to(t_out.dtype))
            h_out.index_copy_(0, positions, as_tensor(result.shannon_entropy, sub).to(h_out.dtype))
        return greedy(t_out), h_out

    def _prepare(self, sub: torch.Tensor, temperature: torch.Tensor, dev: DevicePlan) -> Any:
        assert dev.top_k is not None
        assert dev.top_p is not None
        assert dev.min_p is not None
        filters = dev.plan.filters
        return self.selector.prepare_batch(
            sub,
            temperature=temperature,
            top_k=dev.top_k,
            top_p=dev.top_p,
            min_p=dev.min_p,
            # Checked at admission and by the config model; u comes clamped from the amplifier.
            validate=False,
            # The head is sized from the plan's top-k, not from a device read.
            host_top_k=None if filters is None else filters.top_k,
            filters_off=dev.filters_off,
        )

    def _force_failed(self, logits: torch.Tensor, dev: DevicePlan) -> None:
        """Rows of requests that failed earlier: their stop tokens, and their records."""
        if dev.forced_rows.numel():
            force(logits, dev.forced_rows, dev.forced_tokens)
        failed = dev.plan.failed
        error = failed.states[0].failure
        self._records.failed(
            failed,
            error,
            sequence_numbers=self._sequence_numbers(failed.rows),
            health="failed" if error.startswith(HealthTestFailure.__name__) else "not_tested",
        )

    def _fail(
        self, logits: torch.Tensor, dev: DevicePlan, error: str, health: str = "not_tested"
    ) -> None:
        """Fail the step's requests: stop tokens now, and failed rows from the next plan on."""
        with self._sync_allowed():
            self._fail_rows(logits, dev, error, health)

    def _fail_rows(self, logits: torch.Tensor, dev: DevicePlan, error: str, health: str) -> None:
        sampled = dev.plan.sampled
        _failure.fail_requests(sampled.states, error, self.failed_requests)
        self.slots.changed()
        rows, tokens = _failure.stop_rows(sampled.rows, sampled.states)
        if rows.size:
            rows_t = torch.as_tensor(rows, device=logits.device)
            force(logits, rows_t, torch.as_tensor(tokens, device=logits.device))
        seqs = self._sequence_numbers(sampled.rows)
        self._records.failed(sampled, error, sequence_numbers=seqs, health=health)

    # --- planning (once per batch change) ------------------------------------

    def _plan_for(self, logits: torch.Tensor, row_slots: np.ndarray | None) -> DevicePlan:
        n_rows = int(logits.shape[0])
        key = plan_key(row_slots)
        dev = self._plan
        if (
            dev is not None
            and self._plan_version == self.slots.version
            and dev.plan.n_rows == n_rows
            and dev.plan.key == key
        ):
            return dev
        # A batch change: building the plan puts its tensors on the device (may sync).
        self.plan_steps += 1
        with self._sync_allowed():
            return self._build_plan(logits, row_slots, key)

    def _build_plan(
        self, logits: torch.Tensor, row_slots: np.ndarray | None, key: bytes
    ) -> DevicePlan:
        plan: BatchPlan = build_plan(
            self.slots,
            int(logits.shape[0]),
            int(logits.shape[1]),
            row_slots,
            with_penalties=self.runner == "v1",
            key=key,
        )
        dev = DevicePlan.build(plan, int(logits.shape[1]), logits.device)
        self._plan, self._plan_version = dev, self.slots.version
        return dev
