"""The batched hot path shared by both vLLM model runners.

One call of `BatchSampler.sample` per decode step:

1. (runner V1) the request's repetition / frequency / presence penalties, with
   vLLM's own penalty function, on the rows that ask for them (ERRATA §6);
2. **one** entropy fetch of rows × sample_count bytes, requested now that every
   row's logits exist (ERRATA §12), on the fetch thread; meanwhile:
3. temperature and Shannon entropy for every row, through qr_core, on the
   logits' device (one call per distinct strategy), and the batched selection
   with per-row top-k / top-p / min-p up to its last step (`prepare_batch`);
4. batched amplification of the fetched block to one u per row (host, numpy),
   and u to the device (pinned, non-blocking where the device is not the CPU);
5. the selection's last step, the inverse CDF at u;
6. in-place one-hot forcing of the rows;
7. one (rows, 6) copy back to the host for the records.

Per-row parameters, index tensors and buffers are built when the batch changes,
not per step, and grown only when the batch grows.

Under tensor parallelism every rank of the group samples, and each rank feeds
its own sampled tokens to its next step, so the ranks must choose the same
tokens. Rank 0 (the leader) alone fetches entropy and writes records; at the end
of its step it broadcasts the rows' u over the group (NaN when the step failed).
The other ranks (followers) prepare the same selection on the same logits,
receive u, and finish it, or fail the same requests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from qr_core import SignalAmplifier, TemperatureStrategy, TokenSelector
from qr_entropy import EntropyBlock, EntropySource, EntropyUnavailableError, Provenance
from vllm.utils.torch_utils import make_tensor_with_pad
from vllm.v1.sample.ops.penalties import apply_all_penalties

from qr_vllm._logger import SamplingLogger
from qr_vllm._records import RequestInfo, StepRecords
from qr_vllm._resolve import ResolvedRequest

logger = logging.getLogger("qr_sampler")

__all__ = ["BatchSampler", "SlotState"]

_NEG_INF = float("-inf")
# How long a step waits for the fetch thread to pick its request up (see _fetch).
_FETCH_START_WAIT_S = 0.05


@dataclass(slots=True)
class SlotState:
    """One request in its batch slot."""

    request: ResolvedRequest
    info: RequestInfo
    stop_token: int
    prompt_ids: Sequence[int] | None = None
    output_ids: Sequence[int] | None = None
    # (presence, frequency, repetition) when any differs from neutral (runner V1 only).
    penalties: tuple[float, float, float] | None = None
    next_seq: int = 0
    failure: str = ""


@dataclass(slots=True)
class _Group:
    component: Any
    positions: torch.Tensor | None  # None: every row of the plan
    positions_np: np.ndarray | None
    sample_count: int = 0
    byte_offset: int = 0


@dataclass(slots=True)
class _Plan:
    n_rows: int
    key: bytes
    rows: np.ndarray  # logits rows sampled with entropy
    rows_t: torch.Tensor | None  # None when rows == 0..n_rows-1
    slots: list[SlotState]
    slot_ids: np.ndarray
    infos: tuple[RequestInfo, ...]
    top_k: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    temp_groups: list[_Group] = field(default_factory=list)
    amp_groups: list[_Group] = field(default_factory=list)
    uniform_count: int = 0  # the shared sample_count, 0 when rows differ
    total_bytes: int = 0
    penalty_pos: torch.Tensor | None = None
    penalty_slots: list[SlotState] = field(default_factory=list)
    penalty_prompt: torch.Tensor | None = None
    penalty_values: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    failed_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    failed_slots: list[SlotState] = field(default_factory=list)
    failed_slot_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    failed_rows_t: torch.Tensor | None = None
    failed_tokens_t: torch.Tensor | None = None


class BatchSampler:
    """Choose the token of every qr-sampled row of a batch with fresh entropy.

    Args:
        source: The entropy source (already wrapped in its fallback, if any).
        sampling_logger: Where each step's records go.
        device: The logits' device.
        pin_memory: Use pinned host buffers for the u vector.
        runner: ``v1`` or ``v2``, copied into records.
        tp_group: vLLM's tensor-parallel group coordinator when it has more than one
            rank (see the module docstring), else None.
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
        self._tp = tp_group if tp_group is not None and tp_group.world_size > 1 else None
        #: True on a tensor-parallel rank other than 0: no fetch, no records, u from rank 0.
        self.follower = self._tp is not None and int(self._tp.rank_in_group) != 0
        self.sampling_logger = sampling_logger
        self.device = device
        self.pin_memory = pin_memory and device.type != "cpu"
        self.runner = runner
        self.slots: dict[int, SlotState] = {}
        self.selector = TokenSelector()
        self.failed_requests = 0
        self._version = 0
        self._plan: _Plan | None = None
        self._plan_version = -1
        self._capacity = 0
        self._u_host: torch.Tensor | None = None
        self._u_dev: torch.Tensor | None = None
        self._t_buf: torch.Tensor | None = None
        self._h_buf: torch.Tensor | None = None
        self._sub_buf: torch.Tensor | None = None
        self._fetcher: ThreadPoolExecutor | None = None
        self._fetch_started = threading.Event()

    # --- batch bookkeeping ---------------------------------------------------

    def set_slot(self, slot: int, state: SlotState | None) -> None:
        """Put a request in ``slot`` (None: the slot holds no qr-sampled request)."""
        if state is None:
            self.slots.pop(slot, None)
        else:
            self.slots[slot] = state
        self._version += 1

    def remove(self, slot: int) -> None:
        """The request in ``slot`` left the batch."""
        if self.slots.pop(slot, None) is not None:
            self._version += 1

    def move(self, src: int, dst: int) -> None:
        """The request in ``src`` moved to ``dst`` (replacing whatever was there)."""
        state = self.slots.pop(src, None)
        if state is None:
            self.slots.pop(dst, None)
        else:
            self.slots[dst] = state
        self._version += 1

    def swap(self, a: int, b: int) -> None:
        """The requests in ``a`` and ``b`` traded places."""
        sa = self.slots.pop(a, None)
        sb = self.slots.pop(b, None)
        if sa is not None:
            self.slots[b] = sa
        if sb is not None:
            self.slots[a] = sb
        self._version += 1

    # --- the step ------------------------------------------------------------

    def sample(self, logits: torch.Tensor, row_slots: np.ndarray | None = None) -> None:
        """Force every qr-sampled row of ``logits`` to one-hot on its chosen token, in place.

        Args:
            logits: ``(rows, vocab)`` float logits of this step.
            row_slots: The slot of each row (runner V2); None when row i is slot i (V1).
        """
        n_rows = int(logits.shape[0])
        if n_rows == 0 or not self.slots:
            return
        plan = self._plan_for(logits, row_slots)
        if plan.failed_rows.size:
            self._force_failed(logits, plan)
        if plan.rows.size == 0:
            return
        if self.follower:
            self._follow(logits, plan)
            return
        u: torch.Tensor | None = None
        try:
            u = self._sample_rows(logits, plan)
        except Exception as exc:
            # Nothing may take the shared engine down (ERRATA §5): with no fallback
            # (QR_FALLBACK_MODE=error) an unavailable source fails these requests,
            # which are then ended with their stop token, and the engine keeps serving.
            if not _is_expected_failure(exc):
                logger.exception("qr-sampler step failed unexpectedly; failing its requests")
            self._fail(logits, plan, f"{type(exc).__name__}: {exc}")
            u = None
        if self._tp is not None:
            # Every step that samples rows broadcasts, failed or not: the followers wait for it.
            if u is None:
                u = torch.full(
                    (plan.rows.size,), math.nan, dtype=torch.float64, device=logits.device
                )
            self._tp.broadcast(u, src=0)

    def _follow(self, logits: torch.Tensor, plan: _Plan) -> None:
        """A follower's step: the leader's selection on the same logits, at the leader's u."""
        rows = plan.rows.size
        prepared = None
        error = "the tensor-parallel leader (rank 0) failed this step's requests"
        try:
            sub = self._rows_logits(logits, plan)
            temperature, _ = self._temperature(sub, plan)
            prepared = self._prepare(sub, temperature, plan)
        except Exception as exc:
            logger.exception("qr-sampler follower step failed unexpectedly; failing its requests")
            error = f"{type(exc).__name__}: {exc}"
        # Always receive: the leader broadcasts for every step that samples rows.
        u = torch.empty(rows, dtype=torch.float64, device=logits.device)
        assert self._tp is not None
        self._tp.broadcast(u, src=0)
        try:
            if prepared is None or bool(torch.isnan(u).any()):
                raise EntropyUnavailableError(error)
            sel = prepared.select(u)
            self._force(logits, plan.rows_t, _as_tensor(sel.token_id, logits))
        except Exception as exc:
            self._fail(logits, plan, f"{type(exc).__name__}: {exc}")

    def _prepare(self, sub: torch.Tensor, temperature: torch.Tensor, plan: _Plan) -> Any:
        assert plan.top_k is not None
        assert plan.top_p is not None
        assert plan.min_p is not None
        return self.selector.prepare_batch(
            sub,
            temperature=temperature,
            top_k=plan.top_k,
            top_p=plan.top_p,
            min_p=plan.min_p,
            # Every per-row value was checked at admission (validate_params) and
            # by the config model; u comes clamped from the amplifier.
            validate=False,
        )

    def _sample_rows(self, logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """The leader's step (the only one without tensor parallelism); returns u on the device."""
        rows = plan.rows.size
        sub = self._rows_logits(logits, plan)

        # Just in time: every row's logits (penalties applied) exist now; this is the
        # step's only fetch. It runs on the fetch thread while everything that does not
        # need u is done here: temperatures, entropies, and the selection up to the
        # inverse CDF (candidates, order, masses). A device or network round trip
        # overlaps with that work instead of adding to it.
        started = time.monotonic_ns()
        pending = self._fetch(plan)
        temperature, entropy = self._temperature(sub, plan)
        prepared = self._prepare(sub, temperature, plan)
        block = pending.result()
        prov = block.provenance
        latency = prov.fetch_latency_ns or (time.monotonic_ns() - started)

        u, z, mean = self._amplify(block.data, plan)
        u_dev = self._u_to_device(u, rows)
        sel = prepared.select(u_dev)
        token_ids = _as_tensor(sel.token_id, logits)
        self._force(logits, plan.rows_t, token_ids)

        # One device-to-host copy for the records.
        host = (
            torch.stack(
                [
                    token_ids.to(torch.float64),
                    _as_tensor(sel.token_rank, logits).to(torch.float64),
                    _as_tensor(sel.token_prob, logits).to(torch.float64),
                    _as_tensor(sel.num_candidates, logits).to(torch.float64),
                    temperature.to(torch.float64),
                    entropy.to(torch.float64),
                ],
                dim=1,
            )
            .cpu()
            .numpy()
        )
        values = np.empty((rows, 9), dtype=np.float64)
        values[:, :6] = host
        values[:, 6] = u
        values[:, 7] = z
        values[:, 8] = mean
        self._emit(
            infos=plan.infos,
            slots=plan.slots,
            slot_ids=plan.slot_ids,
            values=values,
            token_ids=host[:, 0].astype(np.int64),
            prov=prov,
            latency_ns=latency,
            status="ok",
            error="",
        )
        return u_dev

    # --- pieces of the step ---------------------------------------------------

    def _fetch(self, plan: _Plan) -> Future[EntropyBlock]:
        if self._fetcher is None:
            # One worker, started on the first step (never at import, ERRATA §17's
            # several processes): requests stay one at a time and in step order.
            self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qr-entropy")
        rows, count = (
            (plan.rows.size, plan.uniform_count) if plan.uniform_count else (1, plan.total_bytes)
        )
        started = self._fetch_started
        started.clear()
        pending = self._fetcher.submit(self._run_fetch, rows, count)
        # Wait until the worker holds the fetch: the step's own work (many small array
        # operations) never gives up the GIL by itself, so a worker merely woken up would
        # only get to run, and the fetch only overlap with nothing, once this thread
        # blocks on the result. Once the worker is inside the source, it waits in a
        # system call or on the network without the GIL. The wait is bounded: a worker
        # that does not show up in time costs overlap, never correctness.
        started.wait(_FETCH_START_WAIT_S)
        return pending

    def _run_fetch(self, rows: int, count: int) -> EntropyBlock:
        self._fetch_started.set()
        return self.source.fetch_block(rows, count)

    def close(self) -> None:
        """Stop the fetch thread (after the fetch in flight, if any)."""
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True)
            self._fetcher = None

    def _rows_logits(self, logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """The sampled rows' logits, with their penalties applied (runner V1)."""
        self._ensure_capacity(plan.rows.size, logits)
        sub = self._gather(logits, plan)
        if plan.penalty_pos is not None:
            self._apply_penalties(sub, plan)
        return sub

    def _gather(self, logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
        if plan.rows_t is None:
            return logits
        assert self._sub_buf is not None
        out = self._sub_buf[: plan.rows.size]
        torch.index_select(logits, 0, plan.rows_t, out=out)
        return out

    def _apply_penalties(self, sub: torch.Tensor, plan: _Plan) -> None:
        assert plan.penalty_pos is not None
        assert plan.penalty_values is not None
        assert plan.penalty_prompt is not None
        part = sub.index_select(0, plan.penalty_pos)
        outputs = [list(s.output_ids or ()) for s in plan.penalty_slots]
        presence, frequency, repetition = plan.penalty_values
        part = apply_all_penalties(
            part, plan.penalty_prompt, presence, frequency, repetition, outputs
        )
        sub.index_copy_(0, plan.penalty_pos, part)

    def _temperature(self, sub: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        if len(plan.temp_groups) == 1:
            strategy: TemperatureStrategy = plan.temp_groups[0].component
            result = strategy.compute_batch(sub)
            return _as_tensor(result.temperature, sub), _as_tensor(result.shannon_entropy, sub)
        assert self._t_buf is not None
        assert self._h_buf is not None
        rows = plan.rows.size
        t_out, h_out = self._t_buf[:rows], self._h_buf[:rows]
        for group in plan.temp_groups:
            assert group.positions is not None
            result = group.component.compute_batch(sub.index_select(0, group.positions))
            t_out.index_copy_(
                0, group.positions, _as_tensor(result.temperature, sub).to(t_out.dtype)
            )
            h_out.index_copy_(
                0, group.positions, _as_tensor(result.shannon_entropy, sub).to(h_out.dtype)
            )
        return t_out, h_out

    def _amplify(self, data: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if plan.uniform_count and len(plan.amp_groups) == 1:
            amplifier: SignalAmplifier = plan.amp_groups[0].component
            res = amplifier.amplify_batch(data)
            return res.u, res.z_score, res.sample_mean
        rows = plan.rows.size
        u = np.empty(rows, dtype=np.float64)
        z = np.empty(rows, dtype=np.float64)
        mean = np.empty(rows, dtype=np.float64)
        flat = data.reshape(-1)
        for group in plan.amp_groups:
            assert group.positions_np is not None
            count = group.positions_np.size
            part = flat[group.byte_offset : group.byte_offset + count * group.sample_count]
            res = group.component.amplify_batch(part.reshape(count, group.sample_count))
            u[group.positions_np] = res.u
            z[group.positions_np] = res.z_score
            mean[group.positions_np] = res.sample_mean
        return u, z, mean

    def _u_to_device(self, u: np.ndarray, rows: int) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64))
        assert self._u_host is not None
        assert self._u_dev is not None
        host = self._u_host[:rows]
        host.numpy()[:] = u
        dev = self._u_dev[:rows]
        dev.copy_(host, non_blocking=self.pin_memory)
        return dev

    @staticmethod
    def _force(logits: torch.Tensor, rows_t: torch.Tensor | None, token_ids: torch.Tensor) -> None:
        if rows_t is None:
            logits.fill_(_NEG_INF)
            logits.scatter_(1, token_ids.view(-1, 1).to(torch.int64), 0.0)
        else:
            logits.index_fill_(0, rows_t, _NEG_INF)
            zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
            logits.index_put_((rows_t, token_ids.to(torch.int64)), zero)

    def _force_failed(self, logits: torch.Tensor, plan: _Plan) -> None:
        assert plan.failed_rows_t is not None
        assert plan.failed_tokens_t is not None
        if plan.failed_rows_t.numel():
            self._force(logits, plan.failed_rows_t, plan.failed_tokens_t)
        tokens = np.array([s.stop_token for s in plan.failed_slots], dtype=np.int64)
        self._emit(
            infos=tuple(s.info for s in plan.failed_slots),
            slots=plan.failed_slots,
            slot_ids=plan.failed_slot_ids,
            values=None,
            token_ids=tokens,
            prov=None,
            latency_ns=0,
            status="failed",
            error=plan.failed_slots[0].failure,
        )

    def _fail(self, logits: torch.Tensor, plan: _Plan, error: str) -> None:
        for state in plan.slots:
            if not state.failure:
                state.failure = error
                self.failed_requests += 1
                logger.error(
                    "request %d (session=%r label=%r) failed: no entropy for its token (%s); "
                    "ending it with its stop token %d",
                    state.info.request_serial,
                    state.info.session,
                    state.info.label,
                    error,
                    state.stop_token,
                )
        self._version += 1
        forced = plan.rows[[i for i, s in enumerate(plan.slots) if s.stop_token >= 0]]
        tokens = [s.stop_token for s in plan.slots if s.stop_token >= 0]
        if forced.size:
            rows_t = torch.as_tensor(forced, device=logits.device)
            self._force(logits, rows_t, torch.as_tensor(tokens, device=logits.device))
        self._emit(
            infos=plan.infos,
            slots=plan.slots,
            slot_ids=plan.slot_ids,
            values=None,
            token_ids=np.array([s.stop_token for s in plan.slots], dtype=np.int64),
            prov=None,
            latency_ns=0,
            status="failed",
            error=error,
        )

    def _emit(
        self,
        *,
        infos: Sequence[RequestInfo],
        slots: Sequence[SlotState],
        slot_ids: np.ndarray,
        values: np.ndarray | None,
        token_ids: np.ndarray,
        prov: Provenance | None,
        latency_ns: int,
        status: str,
        error: str,
    ) -> None:
        if self.follower:
            return  # the leader writes the records of the whole group
        seqs = np.fromiter((_sequence_number(s) for s in slots), dtype=np.int64, count=len(slots))
        now = time.time_ns()
        if prov is not None:
            generated = now - (time.monotonic_ns() - prov.generated_at_ns)
            source, fallback, reason = prov.source, prov.is_fallback, prov.fallback_reason
            health, device_id = str(prov.health.value), prov.device_id
        else:
            generated, source, fallback, reason, health, device_id = (
                0,
                self.source.name,
                False,
                "",
                "not_tested",
                "",
            )
        self.sampling_logger.log_step(
            StepRecords(
                runner=self.runner,
                requests=infos,
                slots=slot_ids,
                sequence_numbers=seqs,
                values=values,
                token_ids=token_ids,
                status="ok" if status == "ok" else "failed",
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

    # --- planning (once per batch change) ------------------------------------

    def _plan_for(self, logits: torch.Tensor, row_slots: np.ndarray | None) -> _Plan:
        n_rows = int(logits.shape[0])
        key = (
            b"" if row_slots is None else np.ascontiguousarray(row_slots, dtype=np.int64).tobytes()
        )
        plan = self._plan
        if (
            plan is not None
            and self._plan_version == self._version
            and plan.n_rows == n_rows
            and plan.key == key
        ):
            return plan
        plan = self._build_plan(logits, row_slots, key)
        self._plan, self._plan_version = plan, self._version
        return plan

    def _build_plan(self, logits: torch.Tensor, row_slots: np.ndarray | None, key: bytes) -> _Plan:
        n_rows, vocab = int(logits.shape[0]), int(logits.shape[1])
        device = logits.device
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
            state = self.slots.get(slot)
            if state is None:
                continue
            if state.failure:
                failed_rows.append(row)
                failed_states.append(state)
            else:
                rows.append(row)
                states.append(state)
        rows_np = np.asarray(rows, dtype=np.int64)
        all_rows = len(rows) == n_rows
        plan = _Plan(
            n_rows=n_rows,
            key=key,
            rows=rows_np,
            rows_t=None if all_rows else torch.as_tensor(rows_np, device=device),
            slots=states,
            slot_ids=slot_of_row[rows_np] if rows else np.empty(0, dtype=np.int64),
            infos=tuple(s.info for s in states),
        )
        if failed_rows:
            forced = [
                (r, s.stop_token)
                for r, s in zip(failed_rows, failed_states, strict=True)
                if s.stop_token >= 0
            ]
            plan.failed_rows = np.asarray(failed_rows, dtype=np.int64)
            plan.failed_slots = failed_states
            plan.failed_slot_ids = slot_of_row[plan.failed_rows]
            plan.failed_rows_t = torch.as_tensor(
                [r for r, _ in forced], dtype=torch.int64, device=device
            )
            plan.failed_tokens_t = torch.as_tensor(
                [t for _, t in forced], dtype=torch.int64, device=device
            )
        if not states:
            return plan
        cfgs = [s.request.config for s in states]
        plan.top_k = torch.as_tensor(
            [min(c.top_k, vocab) if c.top_k > 0 else 0 for c in cfgs],
            dtype=torch.int64,
            device=device,
        )
        plan.top_p = torch.as_tensor([c.top_p for c in cfgs], dtype=torch.float32, device=device)
        plan.min_p = torch.as_tensor([c.min_p for c in cfgs], dtype=torch.float32, device=device)
        plan.temp_groups = _groups([s.request.strategy for s in states], device)
        amp_keys = [(s.request.amplifier, s.request.config.sample_count) for s in states]
        plan.amp_groups = []
        offset = 0
        for group in _groups(amp_keys, device):
            amplifier, count = group.component
            if group.positions_np is None:
                group.positions_np = np.arange(len(states), dtype=np.int64)
            n = group.positions_np.size
            plan.amp_groups.append(
                _Group(amplifier, group.positions, group.positions_np, count, offset)
            )
            offset += n * count
        plan.total_bytes = offset
        counts = {s.request.config.sample_count for s in states}
        plan.uniform_count = counts.pop() if len(counts) == 1 and len(plan.amp_groups) == 1 else 0
        if self.runner == "v1":
            self._plan_penalties(plan, vocab, device)
        return plan

    def _plan_penalties(self, plan: _Plan, vocab: int, device: torch.device) -> None:
        pos = [i for i, s in enumerate(plan.slots) if s.penalties is not None]
        if not pos:
            return
        slots = [plan.slots[i] for i in pos]
        plan.penalty_pos = torch.as_tensor(pos, dtype=torch.int64, device=device)
        plan.penalty_slots = slots
        plan.penalty_prompt = make_tensor_with_pad(
            [list(s.prompt_ids or ()) for s in slots], pad=vocab, dtype=torch.int64, device=device
        )
        vals = [s.penalties for s in slots if s.penalties is not None]
        plan.penalty_values = (
            torch.as_tensor([v[0] for v in vals], dtype=torch.float32, device=device),
            torch.as_tensor([v[1] for v in vals], dtype=torch.float32, device=device),
            torch.as_tensor([v[2] for v in vals], dtype=torch.float32, device=device),
        )

    def _ensure_capacity(self, rows: int, logits: torch.Tensor) -> None:
        vocab = int(logits.shape[1])
        if (
            rows <= self._capacity
            and self._sub_buf is not None
            and self._sub_buf.shape[1] == vocab
            and self._sub_buf.dtype == logits.dtype
        ):
            return
        capacity = max(rows, 2 * self._capacity, 8)
        device = logits.device
        self._sub_buf = torch.empty((capacity, vocab), dtype=logits.dtype, device=device)
        self._t_buf = torch.empty(capacity, dtype=torch.float32, device=device)
        self._h_buf = torch.empty(capacity, dtype=torch.float32, device=device)
        if device.type != "cpu":
            self._u_host = torch.empty(capacity, dtype=torch.float64, pin_memory=self.pin_memory)
            self._u_dev = torch.empty(capacity, dtype=torch.float64, device=device)
        self._capacity = capacity


def _groups(keys: Sequence[Any], device: torch.device) -> list[_Group]:
    """Rows grouped by component identity; one group without index when all share one."""
    first = keys[0]
    if all(k is first or k == first for k in keys):
        return [_Group(first, None, None)]
    order: dict[tuple[int, int], list[int]] = {}
    comps: dict[tuple[int, int], Any] = {}
    for i, k in enumerate(keys):
        ident = (id(k[0]), k[1]) if isinstance(k, tuple) else (id(k), 0)
        order.setdefault(ident, []).append(i)
        comps[ident] = k
    return [
        _Group(
            comps[ident],
            torch.as_tensor(pos, dtype=torch.int64, device=device),
            np.asarray(pos, dtype=np.int64),
        )
        for ident, pos in order.items()
    ]


def _as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(value, device=like.device)


def _sequence_number(state: SlotState) -> int:
    """The index, among the request's output tokens, of the token chosen now.

    Runner V1 hands over the request's live output-token list: its length is that
    index, also when vLLM discards this step's sample (a partly prefilled prompt
    under chunked prefill), whose record then shares its number with the next
    step's, which supersedes it. Runner V2 gives no such list: a counter.
    """
    if state.output_ids is not None:
        return len(state.output_ids)
    seq = state.next_seq
    state.next_seq += 1
    return seq


def _is_expected_failure(exc: BaseException) -> bool:
    return isinstance(exc, EntropyUnavailableError)
