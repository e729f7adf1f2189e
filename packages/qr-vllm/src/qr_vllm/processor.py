"""`QRSamplerLogitsProcessor`: the vLLM plugin, for both model runners.

vLLM finds the class through the ``vllm.logits_processors`` entry point
``qr_sampler``. The one class implements both interfaces (see ARCHITECTURE.md,
design note "Runner V1 and runner V2"):

* runner V1 (CPU, older GPUs) builds it as ``cls(vllm_config, device,
  is_pin_memory)`` and calls ``update_state(batch_update)`` then ``apply(logits)``;
  rows are batch slots;
* runner V2 (the default on GPUs with Triton) checks that it subclasses
  ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``, builds it as
  ``cls(vllm_config, req_states)`` and calls ``add_request(slot, params)`` then
  ``apply(logits, ctx)``; rows are mapped to slots through ``ctx``.

Both reach the same batched hot path (`qr_vllm._sampler.BatchSampler`).
Importing this module opens nothing: sources, threads and files are created
when vLLM constructs the processor in the engine process.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from qr_entropy import EntropySource, EntropyUnavailableError, build_entropy_source
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2LogitsProcessor

from qr_vllm._admission import admit, failure_token_for, stop_token
from qr_vllm._compat import check_vllm_version
from qr_vllm._config import QRSamplerConfig
from qr_vllm._guards import check_engine, reserve_scratch, sync_allowed_factory, warm_up
from qr_vllm._logger import SamplingLogger
from qr_vllm._logging import attach_to_vllm_logging
from qr_vllm._metrics import SamplerMetrics
from qr_vllm._metrics_export import start_metrics, unregister
from qr_vllm._records import EngineIdentity, RequestInfo, TokenSamplingRecord
from qr_vllm._resolve import RequestResolver, request_info
from qr_vllm._sampler import BatchSampler
from qr_vllm._slots import SlotState
from qr_vllm._sources import build_named_sources
from qr_vllm._startup import check_failure_token, check_source
from qr_vllm._v2 import V2Requests

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

logger = logging.getLogger("qr_sampler")

__all__ = ["QRSamplerLogitsProcessor"]


class QRSamplerLogitsProcessor(_V1LogitsProcessor, _V2LogitsProcessor):
    """Choose every token with fresh external entropy and record how it was chosen.

    Args:
        vllm_config: vLLM's configuration (not needed by the processor itself).
        device_or_req_states: Runner V1: the logits' ``torch.device``. Runner V2:
            the ``LogitsProcRequestState`` (its ``device`` is used).
        is_pin_memory: Runner V1: whether pinned host memory is available.
        config: The configuration (default: read from ``QR_*`` and ``.env``).
        source: The entropy source (default: built from ``config``).
        device_path: Take the accelerator's code path on the CPU too (tests).

    Raises:
        UnsupportedEngineError: vLLM runs with settings the processor cannot serve
            (batch-sharded sampling under tensor parallelism, a processed logprobs mode).
    """

    # Built on first use in each process that validates requests (the API server).
    _admission_resolver: ClassVar[RequestResolver | None] = None

    def __init__(
        self,
        vllm_config: Any,
        device_or_req_states: torch.device | LogitsProcRequestState,
        is_pin_memory: bool | None = None,
        *,
        config: QRSamplerConfig | None = None,
        source: EntropySource | None = None,
        device_path: bool = False,
    ) -> None:
        check_vllm_version()
        attach_to_vllm_logging()
        check_engine(vllm_config)
        req_states: Any = None
        if isinstance(device_or_req_states, torch.device):
            runner, device = "v1", device_or_req_states
            pin = bool(is_pin_memory)
        else:
            runner, device = "v2", torch.device(device_or_req_states.device)
            pin = device.type == "cuda"
            req_states = device_or_req_states
        self._v2 = V2Requests(req_states)
        self.config = config if config is not None else QRSamplerConfig()
        self.runner = runner
        check_failure_token(self.config, vllm_config)
        self._reserved = self.config.failure_stop_token_id
        self._resolver = RequestResolver(self.config)
        tp_group = _tensor_parallel_group()
        # Under tensor parallelism only rank 0 draws entropy and writes records; the
        # other ranks take each step's u from it (see qr_vllm._tp).
        follower = tp_group is not None and int(tp_group.rank_in_group) != 0
        if follower:
            self._source: EntropySource = _LeaderDrawsSource()
        else:
            self._source = source if source is not None else build_entropy_source(self.config)
        #: This instance's identity in its records (a new engine_id per process).
        self.engine = EngineIdentity.new(vllm_config)
        records_path = self.engine.records_path(self.config.records_path)
        try:
            if not follower:
                check_source(self._source, self.config.fallback_mode)
            #: The named sources of ``QR_SOURCES`` (the engine's own is ``default``).
            self._named: dict[str, EntropySource] = (
                {} if follower else build_named_sources(self.config, self.config.sources)
            )
            # Opens the records file: a path that cannot be written stops the start here.
            self.sampling_logger = SamplingLogger(
                "none" if follower else self.config.log_level,
                None if follower else records_path,
                self.config.records_queue_steps,
                self.config.diagnostic_max_records,
            )
        except BaseException:
            self._source.close()
            raise
        self._sampler = BatchSampler(
            self._source,
            self.sampling_logger,
            device,
            pin,
            runner,
            tp_group=tp_group,
            engine=self.engine,
            sources=self._named,
            device_path=device_path,
            sync_allowed=sync_allowed_factory(),
        )
        reserve_scratch(self._sampler, vllm_config, req_states)
        self._resolver.warm_default()
        self.compile_s = warm_up(vllm_config, device)  # seconds compiling (QR_COMPILE)
        # Metrics live where tokens are sampled: rank 0 only (see qr_vllm._metrics_export).
        self._metrics: SamplerMetrics | None = None
        if not follower:  # nothing passed may hold self: the metrics must not keep it alive
            self._metrics = start_metrics(
                self.config, vllm_config, self._source, named=self._named,
                failed_requests=self._sampler.failed_requests.snapshot,
                sink=self.sampling_logger.sink,
            )  # fmt: skip
            self.sampling_logger.metrics = self._metrics
        self._serials = itertools.count(1)
        self._finalizer = weakref.finalize(
            self,
            QRSamplerLogitsProcessor._release,
            self._sampler,
            self.sampling_logger,
            self._source,
            self._metrics,
            tuple(self._named.values()),
        )
        if follower:
            assert tp_group is not None
            logger.info(
                "qr-sampler ready on runner %s (%s), tensor-parallel rank %d of %d: "
                "rank 0 draws the entropy and writes the records",
                runner,
                device,
                int(tp_group.rank_in_group),
                int(tp_group.world_size),
            )
            return
        logger.info(
            "qr-sampler ready on runner %s (%s): source %s%s, fallback %s, records %s, "
            "engine_id %s",
            runner,
            device,
            self._source.name,
            "".join(f", {name}={src.name}" for name, src in self._named.items()),
            self.config.fallback_mode,
            records_path or "off",
            self.engine.engine_id,
        )

    # --- admission (API server process) --------------------------------------

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a request whose ``qr_*`` arguments are bad (HTTP 400, engine untouched).

        Also makes the request endable on failure (`qr_vllm._admission.admit`).

        Raises:
            ConfigValidationError: A ValueError naming the key, the value and what is allowed.
        """
        resolver = cls._admission_resolver
        if resolver is None:
            attach_to_vllm_logging()
            resolver = RequestResolver(QRSamplerConfig())
            cls._admission_resolver = resolver
        resolved = resolver.resolve(sampling_params.extra_args)
        admit(sampling_params, resolved.config)

    # --- runner V1 -------------------------------------------------------------

    def is_argmax_invariant(self) -> bool:
        """False: the processor chooses the token, so it must run before greedy argmax."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Apply vLLM's batch changes in its order: removed, added, moved.

        See ARCHITECTURE.md, design note "Runner V1 batch updates".
        """
        if batch_update is None:
            return
        slots = self._sampler.slots
        for index in batch_update.removed:
            slots.remove(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            # An add may reuse a slot whose removal was not listed: set_slot replaces it.
            slots.set_slot(index, self._new_state(params, prompt_ids, output_ids))
        for src, dst, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                slots.swap(src, dst)
            else:
                slots.move(src, dst)

    # --- runner V2 -------------------------------------------------------------

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """Take the request entering slot ``req_idx``; False for bypass requests.

        A request resumed after preemption (vLLM re-adds it, with its output so far
        as part of its prefill) keeps the identity it had: see ARCHITECTURE.md,
        design note "Runner V2 records".
        """
        key, resumed = self._v2.identity(req_idx, sampling_params)
        state = self._new_state(sampling_params, None, None, info=resumed)
        if state is not None:
            self._v2.remember(key, state.info)
        self._sampler.slots.set_slot(req_idx, state)
        return state is not None

    # --- both ------------------------------------------------------------------

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        """Force each qr-sampled row to one-hot on its chosen token, in place.

        Args:
            logits: ``(rows, vocab)`` logits of this step.
            ctx: Runner V2's batch layout (rows are mapped to slots through it);
                None under runner V1, where row i is slot i.

        Returns:
            ``logits`` itself.
        """
        metrics = self._metrics
        started = time.perf_counter_ns() if metrics is not None else 0
        if self._reserved is not None:  # see ARCHITECTURE.md, design note "Visible failure"
            logits[:, self._reserved] = float("-inf")  # no request chooses it; failures force it
        if ctx is None:
            self._sampler.sample(logits)
        else:
            self._apply_v2(logits, ctx)
        if metrics is not None:
            metrics.observe_step_time((time.perf_counter_ns() - started) / 1e9)
        return logits

    def _apply_v2(self, logits: torch.Tensor, ctx: LogitsContext) -> None:
        mapping = ctx.idx_mapping_np
        if int(logits.shape[0]) != len(mapping):
            # Several rows per request (speculative decoding): the host copy of the
            # expanded mapping costs one synchronisation.
            with self._sampler.sync_allowed():
                mapping = ctx.expanded_idx_mapping.cpu().numpy()
            self._sampler.sample(logits, np.asarray(mapping))
            return
        slots, positions = self._v2.rows(
            np.asarray(mapping, dtype=np.int64), ctx.seq_lens_upper_bound_np
        )
        self._sampler.sample(logits, slots, positions)

    # --- introspection -----------------------------------------------------------

    @property
    def diagnostic_records(self) -> list[TokenSamplingRecord]:
        """Records kept in memory for requests with ``diagnostic_mode``."""
        self._sampler.flush_records()
        return self.sampling_logger.diagnostic_records

    def health(self) -> dict[str, object]:
        """The source's health, record counters and failed requests."""
        self._sampler.flush_records()
        return {
            "runner": self.runner,
            "source": self._source.health_check(),
            "sources": {name: src.health_check() for name, src in self._named.items()},
            "failed_requests": self._sampler.failed_requests.total(),
            "active_requests": len(self._sampler.slots),
            **self.sampling_logger.summary(),
        }

    def close(self) -> None:
        """Flush the records file and close the entropy source (idempotent)."""
        self._finalizer()

    @staticmethod
    def _release(
        sampler: BatchSampler,
        sampling_logger: SamplingLogger,
        source: EntropySource,
        metrics: SamplerMetrics | None,
        named: tuple[EntropySource, ...] = (),
    ) -> None:
        if metrics is not None:
            unregister(metrics)
        sampler.close()
        sampling_logger.close()
        source.close()
        for other in named:
            other.close()

    # --- per request -----------------------------------------------------------

    def _new_state(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int] | None,
        output_ids: Sequence[int] | None,
        *,
        info: RequestInfo | None = None,
    ) -> SlotState | None:
        serial = info.request_serial if info is not None else next(self._serials)
        failure = ""
        try:
            resolved = self._resolver.resolve(params.extra_args)
        except Exception as exc:
            # validate_params refuses these at admission; this is reached only when the
            # engine's settings differ from the API server's. Fail the request, not the engine.
            failure = f"{type(exc).__name__}: {exc}"
            logger.error("request %d has bad qr_ arguments: %s; ending it", serial, failure)
            resolved = self._resolver.resolve(None)
        config = resolved.config
        if config.bypass and not failure:
            return None
        state = SlotState(
            request=resolved,
            info=info if info is not None and not failure else request_info(serial, resolved),
            stop_token=stop_token(params, failure_token_for(config, params)),
            prompt_ids=prompt_ids,
            output_ids=output_ids,
            penalties=_penalties(params) if self.runner == "v1" else None,
            failure=failure,
        )
        if failure:
            self._sampler.failed_requests.count(state.info.source)
        return state


def _tensor_parallel_group() -> Any | None:
    """vLLM's tensor-parallel group of this worker when it has several ranks, else None."""
    try:
        from vllm.distributed.parallel_state import get_tp_group  # noqa: PLC0415

        group = get_tp_group()
    except (ImportError, AssertionError):
        return None  # no distributed state: built outside an engine (tools, tests)
    return group if int(group.world_size) > 1 else None


class _LeaderDrawsSource(EntropySource):
    """What a tensor-parallel rank other than 0 holds: it never draws entropy itself."""

    @property
    def name(self) -> str:
        return "tensor_parallel_rank_0"

    def get_random_bytes(self, n: int) -> bytes:
        msg = "only tensor-parallel rank 0 draws entropy; this rank takes u from it"
        raise EntropyUnavailableError(msg)


def _penalties(params: SamplingParams) -> tuple[float, float, float] | None:
    presence = float(params.presence_penalty)
    frequency = float(params.frequency_penalty)
    repetition = float(params.repetition_penalty)
    if presence == 0.0 and frequency == 0.0 and repetition == 1.0:
        return None
    return presence, frequency, repetition
