"""The accelerator's code path, run on CPU tensors: host syncs, just in time, sync checks.

There is no GPU here. `QRSamplerLogitsProcessor(..., device_path=True)` makes the
step take exactly the branches it takes on an accelerator (qr_core's sync-free
mode, the host-sized head, the pinned u buffer, the record ring and the records
thread) on CPU tensors. A TorchDispatchMode plus wrappers of ``Tensor.tolist``,
``.numpy`` and ``.cpu`` then count, on the engine thread, every operation that
would make the host wait for an accelerator. The CPU cannot show the wait itself
(its operations are synchronous anyway); the operations are what cause it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from qr_entropy import EntropySource  # noqa: E402
from qr_vllm import QRSamplerConfig  # noqa: E402
from qr_vllm import _sampler as sampler_module  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.utils import gpu_sync_debug  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.vllm]

VOCAB = 5000
aten = torch.ops.aten
_SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}


def _call_site() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/qr_vllm/" in frame.filename or "/qr_core/" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "elsewhere"


class HostSyncs(TorchDispatchMode):
    """Counts, by call site, the engine thread's operations that would sync the host.

    ``host``: tensors that live in host memory (pinned buffers), whose reads are free.
    """

    def __init__(self, host: list[torch.Tensor], *, raise_outside_allowed: bool = False) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()
        self._host = {t.untyped_storage().data_ptr() for t in host}
        self._thread = threading.get_ident()
        self._raise = raise_outside_allowed
        self._patches: list[tuple[str, Any]] = []

    def _hit(self, what: str) -> None:
        if threading.get_ident() != self._thread:
            return
        if self._raise and gpu_sync_debug._allow_depth.get() == 0:
            # What vLLM's VLLM_GPU_SYNC_CHECK=error does to a sync outside gpu_sync_allowed.
            raise RuntimeError(gpu_sync_debug.SYNC_ERROR_MESSAGE)
        self.sites[f"{what} @ {_call_site()}"] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _SYNCING or (
            func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default)
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
        ):
            self._hit(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostSyncs:
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)

            def wrapper(t: Any, *a: Any, _o: Any = original, _n: str = name, **k: Any) -> Any:
                if t.untyped_storage().data_ptr() not in self._host:
                    self._hit(f"Tensor.{_n}")
                return _o(t, *a, **k)

            self._patches.append((name, original))
            setattr(torch.Tensor, name, wrapper)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for name, original in self._patches:
            setattr(torch.Tensor, name, original)
        self._patches.clear()

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def host_tensors(proc: QRSamplerLogitsProcessor) -> list[torch.Tensor]:
    s = proc._sampler
    return [t for t in (s._buffers._u_host, *s._ring._host) if t is not None]


def make(tmp_path: Path, *, device_path: bool, **settings: Any) -> QRSamplerLogitsProcessor:
    settings.setdefault("entropy_source_type", "mock_uniform")
    settings.setdefault("mock_seed", 11)
    settings.setdefault("sample_count", 64)
    settings.setdefault("records_path", tmp_path / "records.jsonl")
    return QRSamplerLogitsProcessor(
        None,
        torch.device("cpu"),
        False,
        config=QRSamplerConfig(**settings),
        device_path=device_path,
    )


def params(**extra: Any) -> SamplingParams:
    sp = SamplingParams(max_tokens=64, extra_args=extra or None)
    sp._eos_token_id = 5
    return sp


REQUESTS = [
    {"qr_label": "plain"},
    {"qr_label": "edt", "qr_temperature_strategy": "edt"},
    {"qr_label": "filters", "qr_top_k": 40, "qr_top_p": 0.9, "qr_min_p": 0.05},
    {"qr_label": "bypass", "qr_bypass": True},
    {"qr_label": "top-p", "qr_top_p": 0.8},
]


def add_all(proc: QRSamplerLogitsProcessor) -> None:
    added = [(i, params(**extra), [1, 2, 3], []) for i, extra in enumerate(REQUESTS)]
    # Runner V1 applies the penalties itself (vLLM's function: pinned, non-blocking copies).
    added[0][1].presence_penalty = 0.5
    added[0][1].repetition_penalty = 1.2
    proc.update_state(BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[]))


def model_logits(step: int) -> torch.Tensor:
    """Peaked like a language model's: most of the mass in a few tokens."""
    gen = torch.Generator().manual_seed(step)
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    logits = -1.2 * torch.log(ranks).repeat(len(REQUESTS), 1)
    logits += 0.3 * torch.randn(len(REQUESTS), VOCAB, generator=gen)
    perm = torch.randperm(VOCAB, generator=gen)
    return logits[:, perm].contiguous()


def read(tmp_path: Path, proc: QRSamplerLogitsProcessor) -> list[dict[str, Any]]:
    proc._sampler.flush_records()
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    return [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]


def test_one_host_sync_per_steady_state_step_and_the_same_tokens(tmp_path: Path) -> None:
    cpu_dir, dev_dir = tmp_path / "cpu", tmp_path / "dev"
    cpu_dir.mkdir()
    dev_dir.mkdir()
    cpu = make(cpu_dir, device_path=False)
    dev = make(dev_dir, device_path=True)
    add_all(cpu)
    add_all(dev)
    per_step: list[int] = []
    sites: Counter[str] = Counter()
    for step in range(6):
        a, b = model_logits(step), model_logits(step)
        cpu.apply(a)
        plans_before = dev._sampler.plan_steps
        with HostSyncs(host_tensors(dev)) as syncs:
            dev.apply(b)
        if dev._sampler.plan_steps == plans_before:  # batch-change steps are counted apart
            per_step.append(syncs.total)
            sites += syncs.sites
        assert torch.equal(a, b), f"step {step}: the device path chose other tokens"
    assert dev._sampler.plan_steps == 1
    assert len(per_step) == 5
    assert max(per_step) <= 1, sites
    # The one sync: which rows need a wider head (qr_core's row_indices).
    assert all(site.startswith("aten.nonzero") for site in sites), sites
    want, got = read(cpu_dir, cpu), read(dev_dir, dev)
    assert len(got) == len(want) == 6 * 4
    for w, g in zip(want, got, strict=True):
        for key in ("token_id", "token_rank", "num_candidates", "sequence_number", "label", "u"):
            assert g[key] == w[key], key
        for key in ("token_prob", "temperature", "shannon_entropy"):
            assert g[key] == pytest.approx(w[key], rel=1e-5), key  # float32 entropy
    cpu.close()
    dev.close()


def test_without_the_device_path_the_step_would_sync_more(tmp_path: Path) -> None:
    # The counter can fail: the same step with qr_core's ordinary checks reads more.
    proc = make(tmp_path, device_path=True)
    add_all(proc)
    proc.apply(model_logits(0))
    original = sampler_module.sync_free

    class _NoSyncFree:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    sampler_module.sync_free = _NoSyncFree  # type: ignore[assignment]
    try:
        from qr_core import _array

        small = _array.SMALL_HOST_ELEMENTS
        _array.SMALL_HOST_ELEMENTS = -1
        with HostSyncs(host_tensors(proc)) as syncs:
            proc.apply(model_logits(1))
        _array.SMALL_HOST_ELEMENTS = small
    finally:
        sampler_module.sync_free = original
    assert syncs.total > 1, syncs.sites
    proc.close()


class GatedEvent:
    """A logits-ready event that fires when the test says; notes who waited on it."""

    def __init__(self) -> None:
        self.fired = threading.Event()
        self.entered = threading.Event()
        self.waiters: list[str] = []
        self.fired_at = 0

    def synchronize(self) -> None:
        self.waiters.append(threading.current_thread().name)
        self.entered.set()
        assert self.fired.wait(60)

    def fire(self) -> None:
        self.fired_at = time.time_ns()
        self.fired.set()


class CountingSource(EntropySource):
    def __init__(self) -> None:
        self.calls: list[int] = []

    @property
    def name(self) -> str:
        return "counting"

    def get_random_bytes(self, n: int) -> bytes:
        self.calls.append(time.time_ns())
        return os.urandom(n)


def test_the_fetch_cannot_start_before_the_logits_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = CountingSource()
    proc = QRSamplerLogitsProcessor(
        None,
        torch.device("cpu"),
        False,
        config=QRSamplerConfig(
            entropy_source_type="mock_uniform", sample_count=16, records_path=tmp_path / "r.jsonl"
        ),
        source=source,
        device_path=True,
    )
    add_all(proc)
    events: list[GatedEvent] = []

    def gated(logits: torch.Tensor) -> GatedEvent:
        events.append(GatedEvent())
        return events[-1]

    monkeypatch.setattr(sampler_module, "logits_event", gated)
    for step in range(3):
        engine = threading.Thread(target=proc.apply, args=(model_logits(step),), name="engine")
        engine.start()
        assert events[-1].entered.wait(60)
        calls_before = len(source.calls)
        # The engine thread went on queueing its work; the fetch thread waits: no bytes asked.
        time.sleep(0.05)
        assert len(source.calls) == calls_before
        events[-1].fire()
        engine.join(60)
        assert not engine.is_alive()
        assert len(source.calls) == calls_before + 1
        assert source.calls[-1] >= events[-1].fired_at
        assert events[-1].waiters == [events[-1].waiters[0]]
        assert events[-1].waiters[0].startswith("qr-entropy")
    proc._sampler.flush_records()
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert 0 < row["logits_ready_ns"] <= row["entropy_requested_ns"]
    firsts = sorted({r["logits_ready_ns"] for r in rows})
    for event, ready in zip(events, firsts, strict=True):
        assert ready >= event.fired_at - 5_000_000  # clocks: monotonic mapped to Unix time
    proc.close()


def test_survives_vllm_gpu_sync_check_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # VLLM_GPU_SYNC_CHECK=error makes every sync outside gpu_sync_allowed raise on the
    # engine thread (vLLM arms it only on CUDA: emulated here by the counter).
    monkeypatch.setattr(gpu_sync_debug, "_SYNC_CHECK_MODE", "error")
    proc = make(tmp_path, device_path=True)
    add_all(proc)
    proc.apply(model_logits(0))  # the batch change allocates the host buffers the counter spares
    for step in range(1, 4):
        with HostSyncs(host_tensors(proc), raise_outside_allowed=True):
            proc.apply(model_logits(step))
    assert proc.health()["failed_requests"] == 0

    # A sync the step did not plan for fails the step's requests, never the engine.
    original = sampler_module.BatchSampler._temperature

    def syncing(self: Any, sub: torch.Tensor, dev: Any) -> Any:
        sub[0, 0].item()
        return original(self, sub, dev)

    monkeypatch.setattr(sampler_module.BatchSampler, "_temperature", syncing)
    logits = model_logits(9)
    with HostSyncs(host_tensors(proc), raise_outside_allowed=True):
        proc.apply(logits)
    assert proc.health()["failed_requests"] == 4
    rows = read(tmp_path, proc)
    assert sum(r["status"] == "ok" for r in rows) == 16
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4
    assert all("GPU<->CPU sync" in r["error"] for r in failed)
    assert int(torch.argmax(logits[0])) == 5  # forced to its stop token
    proc.close()


def test_scratch_is_reserved_from_max_num_seqs_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vllm_config = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=24),
        model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB, logprobs_mode="raw_logprobs"),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
    )
    with caplog.at_level("INFO", logger="qr_sampler"):
        proc = QRSamplerLogitsProcessor(
            vllm_config,
            torch.device("cpu"),
            False,
            config=QRSamplerConfig(entropy_source_type="mock_uniform"),
            device_path=True,
        )
    assert any(
        "qr-sampler scratch" in r.getMessage() and "24 rows of 5000 logits" in r.getMessage()
        for r in caplog.records
    )
    buffers = proc._sampler._buffers
    assert buffers.capacity == 24
    sub = buffers._sub
    add_all(proc)
    proc.apply(model_logits(0))
    assert buffers._sub is sub  # nothing allocated by the step
    proc.close()


def test_v2_positions_come_from_the_plan_not_from_the_device(tmp_path: Path) -> None:
    # The V2 row mapping and positions are host arrays: the steady state stays at one sync.
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsContext,
        LogitsProcRequestState,
    )

    n = len(REQUESTS)
    lengths = SimpleNamespace(np=np.full(8, 3, dtype=np.int32))
    state = LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=8,
        vocab_size=VOCAB,
        all_token_ids=None,
        prompt_len=lengths,
        prefill_len=lengths,
        total_len=None,
    )
    proc = QRSamplerLogitsProcessor(
        None,
        state,
        config=QRSamplerConfig(entropy_source_type="mock_uniform", records_path=tmp_path / "r"),
        device_path=True,
    )
    for slot, extra in enumerate(REQUESTS):
        proc.add_request(slot, params(**extra))
    order = np.arange(n, dtype=np.int32)[::-1].copy()
    totals = []
    for step in range(4):
        mapping = torch.as_tensor(order)
        ctx = LogitsContext(
            expanded_idx_mapping=mapping,
            idx_mapping=mapping,
            idx_mapping_np=order,
            expanded_local_pos=torch.zeros(n, dtype=torch.int32),
            input_ids=torch.zeros(n, dtype=torch.int64),
            pos=torch.zeros(n, dtype=torch.int64),
            seq_lens_upper_bound_np=np.full(n, 3 + step, dtype=np.int32),
        )
        with HostSyncs(host_tensors(proc)) as syncs:
            proc.apply(model_logits(step), ctx)
        totals.append(syncs.total)
    assert max(totals[1:]) <= 1
    proc.close()


# --- guards --------------------------------------------------------------------


def _config(**parts: Any) -> SimpleNamespace:
    return SimpleNamespace(**parts)


def test_refuses_batch_sharded_sampling_under_tensor_parallelism() -> None:
    from qr_vllm._errors import UnsupportedEngineError
    from vllm.config import ParallelConfig

    # The names read are vLLM's own.
    assert "enable_batch_sharded_sampling" in ParallelConfig.__dataclass_fields__
    sharded = _config(
        parallel_config=_config(tensor_parallel_size=2, enable_batch_sharded_sampling=True)
    )
    with pytest.raises(UnsupportedEngineError, match="enable_batch_sharded_sampling"):
        QRSamplerLogitsProcessor(sharded, torch.device("cpu"), False)
    # Ignored by vLLM (and harmless) without tensor parallelism.
    single = _config(
        parallel_config=_config(tensor_parallel_size=1, enable_batch_sharded_sampling=True)
    )
    QRSamplerLogitsProcessor(
        single,
        torch.device("cpu"),
        False,
        config=QRSamplerConfig(entropy_source_type="mock_uniform"),
    ).close()


@pytest.mark.parametrize("mode", ["processed_logprobs", "processed_logits"])
def test_refuses_processed_logprobs_modes(mode: str) -> None:
    from qr_vllm._errors import UnsupportedEngineError
    from qr_vllm._guards import PROCESSED_MODES
    from vllm.config.model import PROCESSED_LOGPROBS_MODES

    assert set(PROCESSED_MODES) == set(PROCESSED_LOGPROBS_MODES)
    with pytest.raises(UnsupportedEngineError, match=rf"logprobs_mode='{mode}'.*raw_logprobs"):
        QRSamplerLogitsProcessor(
            _config(model_config=_config(logprobs_mode=mode)), torch.device("cpu"), False
        )


@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits"])
def test_raw_logprobs_modes_are_served(mode: str) -> None:
    QRSamplerLogitsProcessor(
        _config(model_config=_config(logprobs_mode=mode)),
        torch.device("cpu"),
        False,
        config=QRSamplerConfig(entropy_source_type="mock_uniform"),
    ).close()


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "ring"])
def test_step_stats_take_bfloat16_columns(on_device: bool) -> None:
    """A strategy from another package may report temperature and entropy in bfloat16
    (the built-in ones use float32 or float64): both ways of writing the record columns
    convert them, where ``Tensor.numpy`` alone would refuse bfloat16."""
    from qr_vllm._device import HostRing, step_stats

    rows = 3
    ids = torch.tensor([5, 0, 7])
    temperature = torch.tensor([0.5, 0.75, 1.25], dtype=torch.bfloat16)  # exact in bfloat16
    entropy = torch.tensor([2.5, 0.0, 3.0], dtype=torch.bfloat16)
    columns = [ids, ids * 0, torch.tensor([0.25, 1.0, 0.5], dtype=torch.float64), ids + 1]
    out = np.full((rows, 6), np.nan)
    ring = None
    if on_device:
        ring = HostRing(torch.device("cpu"), pin_memory=False)
        ring.reserve(rows)
    pending = step_stats([*columns, temperature, entropy], out, ring)
    if pending is not None:
        out[:] = pending.wait()
    expected = np.array(
        [[5, 0, 0.25, 6, 0.5, 2.5], [0, 0, 1.0, 1, 0.75, 0.0], [7, 0, 0.5, 8, 1.25, 3.0]]
    )
    np.testing.assert_array_equal(out, expected)
