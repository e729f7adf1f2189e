"""The step: `BatchSampler` chooses every qr-sampled row's token, for both vLLM runners.

One call of `BatchSampler.sample` per decode step:

1. (runner V1) the request's repetition / frequency / presence penalties, with
   vLLM's own penalty function, on the rows that ask for them (`qr_vllm._penalties`);
2. **one** entropy fetch of rows × sample_count bytes, requested now that every
   row's logits exist, on the fetch thread (`qr_vllm._fetch`); meanwhile:
3. temperature and Shannon entropy for every row, through qr_core, on the
   logits' device (one call per distinct strategy), and the batched selection
   with per-row top-k / top-p / min-p up to its last step (`prepare_batch`);
4. batched amplification of the fetched block to one u per row (host, numpy),
   and u to the device (pinned, non-blocking where the device is not the CPU);
5. the selection's last step, the inverse CDF at u;
6. in-place one-hot forcing of the rows;
7. one (rows, 6) copy back to the host for the records (`qr_vllm._emit`).

The rows' plan (`qr_vllm._plan`) and its tensors (`qr_vllm._device`) are built
when the batch changes, not per step. Under tensor parallelism rank 0 leads and
the other ranks follow (`qr_vllm._tp`); a step that cannot sample fails its
requests, never the engine (`qr_vllm._failure`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from qr_core import TokenSelector
from qr_entropy import EntropySource, EntropyUnavailableError

from qr_vllm import _failure
from qr_vllm._device import DevicePlan, StepBuffers, as_tensor, force
from qr_vllm._emit import RecordEmitter
from qr_vllm._fetch import Fetcher, amplify
from qr_vllm._logger import SamplingLogger
from qr_vllm._plan import BatchPlan, build_plan, plan_key
from qr_vllm._records import DEVICE_COLUMNS, N_VALUE_COLUMNS, Column
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
        self.failed_requests = 0
        self._records = RecordEmitter(sampling_logger, runner, source, enabled=not self.follower)
        self._fetcher = Fetcher(source)
        self._buffers = StepBuffers(device, pin_memory)
        self._plan: DevicePlan | None = None
        self._plan_version = -1

    def sample(self, logits: torch.Tensor, row_slots: np.ndarray | None = None) -> None:
        """Force every qr-sampled row of ``logits`` to one-hot on its chosen token, in place.

        Args:
            logits: ``(rows, vocab)`` float logits of this step.
            row_slots: The slot of each row (runner V2); None when row i is slot i (V1).
        """
        if int(logits.shape[0]) == 0 or not self.slots:
            return
        dev = self._plan_for(logits, row_slots)
        plan = dev.plan
        if plan.failed.size:
            self._force_failed(logits, dev)
        if plan.sampled.size == 0:
            return
        if self.follower:
            self._follow(logits, dev)
            return
        u: torch.Tensor | None = None
        try:
            u = self._lead(logits, dev)
        except Exception as exc:
            # Nothing may take the shared engine down: see qr_vllm._failure.
            if not _failure.is_expected(exc):
                logger.exception("qr-sampler step failed unexpectedly; failing its requests")
            self._fail(logits, dev, _failure.describe(exc))
            u = None
        if self._tp is not None:
            # Every step that samples rows broadcasts, failed or not: the followers wait for it.
            self._tp.send(u, plan.sampled.size, logits.device)

    def close(self) -> None:
        """Stop the fetch thread (after the fetch in flight, if any)."""
        self._fetcher.close()

    # --- the leader's and the followers' steps --------------------------------

    def _lead(self, logits: torch.Tensor, dev: DevicePlan) -> torch.Tensor:
        """The leader's step (the only one without tensor parallelism); returns u on the device."""
        plan = dev.plan
        assert plan.entropy is not None
        rows = plan.sampled.size
        sub = self._rows_logits(logits, dev)

        # Just in time: every row's logits (penalties applied) exist now; this is the
        # step's only fetch. It runs on the fetch thread while everything that does not
        # need u is done here: temperatures, entropies, and the selection up to the
        # inverse CDF (candidates, order, masses). A device or network round trip
        # overlaps with that work instead of adding to it.
        started = time.monotonic_ns()
        pending = self._fetcher.start(plan.entropy)
        temperature, entropy = self._temperature(sub, dev)
        prepared = self._prepare(sub, temperature, dev)
        block = pending.result()
        prov = block.provenance
        latency = prov.fetch_latency_ns or (time.monotonic_ns() - started)

        u, z, mean = amplify(block.data, plan.entropy)
        u_dev = self._buffers.u_to_device(u, rows)
        sel = prepared.select(u_dev)
        token_ids = as_tensor(sel.token_id, logits)
        force(logits, dev.rows, token_ids)

        # One device-to-host copy for the records: the device columns, in Column order.
        host = (
            torch.stack(
                [
                    token_ids.to(torch.float64),  # Column.TOKEN_ID
                    as_tensor(sel.token_rank, logits).to(torch.float64),  # TOKEN_RANK
                    as_tensor(sel.token_prob, logits).to(torch.float64),  # TOKEN_PROB
                    as_tensor(sel.num_candidates, logits).to(torch.float64),  # NUM_CANDIDATES
                    temperature.to(torch.float64),  # TEMPERATURE
                    entropy.to(torch.float64),  # SHANNON_ENTROPY
                ],
                dim=1,
            )
            .cpu()
            .numpy()
        )
        values = np.empty((rows, N_VALUE_COLUMNS), dtype=np.float64)
        values[:, DEVICE_COLUMNS] = host
        values[:, Column.U] = u
        values[:, Column.Z_SCORE] = z
        values[:, Column.SAMPLE_MEAN] = mean
        self._records.sampled(plan.sampled, values, prov, latency)
        return u_dev

    def _follow(self, logits: torch.Tensor, dev: DevicePlan) -> None:
        """A follower's step: the leader's selection on the same logits, at the leader's u."""
        assert self._tp is not None
        prepared = None
        error = _failure.LEADER_FAILED
        try:
            sub = self._rows_logits(logits, dev)
            temperature, _ = self._temperature(sub, dev)
            prepared = self._prepare(sub, temperature, dev)
        except Exception as exc:
            logger.exception("qr-sampler follower step failed unexpectedly; failing its requests")
            error = _failure.describe(exc)
        # Always receive: the leader broadcasts for every step that samples rows.
        u = self._tp.receive(dev.plan.sampled.size, logits.device)
        try:
            if prepared is None or u is None:
                raise EntropyUnavailableError(error)
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
            return as_tensor(result.temperature, sub), as_tensor(result.shannon_entropy, sub)
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
        return t_out, h_out

    def _prepare(self, sub: torch.Tensor, temperature: torch.Tensor, dev: DevicePlan) -> Any:
        assert dev.top_k is not None
        assert dev.top_p is not None
        assert dev.min_p is not None
        return self.selector.prepare_batch(
            sub,
            temperature=temperature,
            top_k=dev.top_k,
            top_p=dev.top_p,
            min_p=dev.min_p,
            # Every per-row value was checked at admission (validate_params) and
            # by the config model; u comes clamped from the amplifier.
            validate=False,
        )

    def _force_failed(self, logits: torch.Tensor, dev: DevicePlan) -> None:
        """Rows of requests that failed earlier: their stop tokens, and their records."""
        if dev.forced_rows.numel():
            force(logits, dev.forced_rows, dev.forced_tokens)
        failed = dev.plan.failed
        self._records.failed(failed, failed.states[0].failure)

    def _fail(self, logits: torch.Tensor, dev: DevicePlan, error: str) -> None:
        """Fail the step's requests: stop tokens now, and failed rows from the next plan on."""
        sampled = dev.plan.sampled
        self.failed_requests += _failure.fail_requests(sampled.states, error)
        self.slots.changed()
        rows, tokens = _failure.stop_rows(sampled.rows, sampled.states)
        if rows.size:
            rows_t = torch.as_tensor(rows, device=logits.device)
            force(logits, rows_t, torch.as_tensor(tokens, device=logits.device))
        self._records.failed(sampled, error)

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
        plan: BatchPlan = build_plan(
            self.slots,
            n_rows,
            int(logits.shape[1]),
            row_slots,
            with_penalties=self.runner == "v1",
            key=key,
        )
        dev = DevicePlan.build(plan, int(logits.shape[1]), logits.device)
        self._plan, self._plan_version = dev, self.slots.version
        return dev
