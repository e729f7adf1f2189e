"""The processor on CPU tensors with vLLM's real types (BatchUpdate, SamplingParams, LogitsContext).

vllm_config is passed as None: the processor does not read it, and building a
real VllmConfig needs a model directory (the integration tests do that).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from qr_entropy import EntropySource, EntropyUnavailableError  # noqa: E402
from qr_vllm import ConfigValidationError, QRSamplerConfig  # noqa: E402
from qr_vllm.processor import QRSamplerLogitsProcessor  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import (  # noqa: E402
    LogitsContext,
    LogitsProcRequestState,
)

pytestmark = [pytest.mark.torch, pytest.mark.vllm]

VOCAB = 300


class FlakySource(EntropySource):
    """os.urandom that can be switched off (a device that goes away)."""

    def __init__(self) -> None:
        self.down = False
        self.requests: list[int] = []

    @property
    def name(self) -> str:
        return "flaky"

    def get_random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        if self.down:
            raise EntropyUnavailableError("device unplugged")
        import os

        return os.urandom(n)


def make(
    tmp_path: Path | None = None, source: EntropySource | None = None, **settings: Any
) -> QRSamplerLogitsProcessor:
    settings.setdefault("entropy_source_type", "mock_uniform")
    settings.setdefault("mock_seed", 7)
    settings.setdefault("sample_count", 64)
    if tmp_path is not None:
        settings.setdefault("records_path", tmp_path / "records.jsonl")
    config = QRSamplerConfig(**settings)
    return QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config, source=source)


def params(eos: int | None = 5, **extra: Any) -> SamplingParams:
    sp = SamplingParams(max_tokens=8, extra_args=extra or None)
    if eos is not None:
        sp._eos_token_id = eos
    return sp


def add(
    proc: QRSamplerLogitsProcessor, *entries: tuple[int, SamplingParams], size: int | None = None
) -> dict[int, list[int]]:
    """Add requests as runner V1 does; returns each slot's live output-token list."""
    added = [(i, sp, [1, 2, 3], []) for i, sp in entries]
    proc.update_state(BatchUpdate(batch_size=size or len(added), removed=[], added=added, moved=[]))
    return {i: out for i, _, _, out in added}


def emitted(logits: torch.Tensor, outputs: dict[int, list[int]]) -> None:
    """What vLLM does after a step: append each row's token to its request's output list."""
    for slot, out in outputs.items():
        out.append(int(torch.argmax(logits[slot])))


def one_hot_token(row: torch.Tensor) -> int:
    finite = torch.isfinite(row)
    assert int(finite.sum()) == 1
    token = int(torch.argmax(row))
    assert float(row[token]) == 0.0
    return token


def records(tmp_path: Path, proc: QRSamplerLogitsProcessor) -> list[dict[str, Any]]:
    assert proc.sampling_logger.sink is not None
    assert proc.sampling_logger.sink.flush()
    path = tmp_path / "records.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_one_hot_rows_and_records_match(tmp_path: Path) -> None:
    proc = make(tmp_path)
    add(proc, (0, params(qr_label="a")), (1, params(qr_label="b")))
    logits = torch.randn(2, VOCAB)
    out = proc.apply(logits)
    assert out is logits
    tokens = [one_hot_token(logits[i]) for i in range(2)]
    rows = records(tmp_path, proc)
    assert [r["token_id"] for r in rows] == tokens
    assert [r["label"] for r in rows] == ["a", "b"]
    assert all(r["entropy_source"] == "mock_uniform" and not r["is_fallback"] for r in rows)
    assert all(r["sample_count"] == 64 and 0 < r["u"] < 1 for r in rows)
    assert all(r["runner"] == "v1" for r in rows)
    proc.close()


def test_one_fetch_per_step_for_all_rows() -> None:
    source = FlakySource()
    proc = make(source=source)
    add(proc, (0, params()), (1, params()), (2, params(qr_bypass=True)))
    proc.apply(torch.randn(3, VOCAB))
    assert source.requests == [2 * 64]
    proc.apply(torch.randn(3, VOCAB))
    assert source.requests == [128, 128]


def test_the_fetch_is_under_way_before_the_step_computes_temperatures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The step's own work holds the GIL; the fetch only overlaps with it if the fetch
    # thread is already inside the source when that work starts.
    import threading
    import time

    from qr_vllm import _fetch, _sampler

    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    class SlowSource(FlakySource):
        def get_random_bytes(self, n: int) -> bytes:
            entered.set()
            release.wait(5)  # a device answering slowly, without the GIL
            return super().get_random_bytes(n)

    original = _sampler.BatchSampler._temperature

    def temperature(self: Any, sub: Any, plan: Any) -> Any:
        seen.append(entered.is_set())
        release.set()
        return original(self, sub, plan)

    monkeypatch.setattr(_fetch, "FETCH_START_WAIT_S", 30.0)
    monkeypatch.setattr(_sampler.BatchSampler, "_temperature", temperature)
    source = SlowSource()
    proc = make(source=source)
    add(proc, (0, params()), (1, params()))
    proc.apply(torch.randn(2, VOCAB))  # the first step starts the thread, which runs at once
    entered.clear()
    release.clear()
    started = time.monotonic()
    proc.apply(logits := torch.randn(2, VOCAB))
    assert seen == [True, True]
    assert time.monotonic() - started < 5  # released by the step, not by the timeout
    assert [one_hot_token(logits[i]) >= 0 for i in range(2)] == [True, True]
    proc.close()


def test_mixed_sample_counts_still_one_fetch() -> None:
    source = FlakySource()
    proc = make(source=source)
    add(proc, (0, params()), (1, params(qr_sample_count=10)), (2, params()))
    proc.apply(torch.randn(3, VOCAB))
    assert source.requests == [64 + 10 + 64]


def test_top_k_one_is_greedy_and_bypass_rows_are_untouched() -> None:
    proc = make()
    add(
        proc,
        (0, params(qr_top_k=1)),
        (1, params(qr_bypass=True)),
        (2, params(qr_top_k=1, qr_temperature_strategy="edt")),
    )
    logits = torch.randn(3, VOCAB)
    original = logits.clone()
    proc.apply(logits)
    assert one_hot_token(logits[0]) == int(original[0].argmax())
    assert one_hot_token(logits[2]) == int(original[2].argmax())
    assert torch.equal(logits[1], original[1])


def test_fixed_temperature_zero_is_greedy() -> None:
    proc = make()
    add(proc, (0, params(qr_fixed_temperature=0.0, qr_top_k=0, qr_top_p=1.0)))
    logits = torch.randn(1, VOCAB)
    original = logits.clone()
    proc.apply(logits)
    assert one_hot_token(logits[0]) == int(original[0].argmax())


def test_empty_batch_and_no_requests() -> None:
    proc = make()
    empty = torch.empty(0, VOCAB)
    assert proc.apply(empty) is empty
    logits = torch.randn(2, VOCAB)
    original = logits.clone()
    proc.apply(logits)  # nothing added: rows belong to nobody
    assert torch.equal(logits, original)
    proc.update_state(None)


def test_update_state_add_remove_move_swap_and_reuse(tmp_path: Path) -> None:
    proc = make(tmp_path)
    sampler = proc._sampler
    add(proc, (0, params(qr_label="r0")), (1, params(qr_label="r1")), (2, params(qr_label="r2")))

    def labels() -> dict[int, str]:
        return {slot: state.info.label for slot, state in sampler.slots.items()}

    assert labels() == {0: "r0", 1: "r1", 2: "r2"}
    # removed, then added into a removed slot, then moved: vLLM's order (see ARCHITECTURE.md,
    # design note "Runner V1 batch updates").
    proc.update_state(
        BatchUpdate(
            batch_size=3,
            removed=[1],
            added=[(1, params(qr_label="r3"), [1], [])],
            moved=[(2, 0, MoveDirectionality.SWAP)],
        )
    )
    assert labels() == {0: "r2", 1: "r3", 2: "r0"}
    # A one-way move over a slot, and an add that reuses a slot without a removal.
    proc.update_state(
        BatchUpdate(
            batch_size=2,
            removed=[0],
            added=[(1, params(qr_label="r4"), [1], [])],
            moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)],
        )
    )
    assert labels() == {0: "r0", 1: "r4"}
    # A bypass request replacing a qr request frees the slot; moving an empty slot clears.
    proc.update_state(
        BatchUpdate(
            batch_size=2,
            removed=[],
            added=[(1, params(qr_bypass=True), [1], [])],
            moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)],
        )
    )
    assert labels() == {}
    add(proc, (0, params(qr_label="a")), (1, params(qr_label="b")))
    proc.update_state(
        BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 5, MoveDirectionality.SWAP)])
    )
    assert labels() == {5: "a", 1: "b"}
    proc.update_state(
        BatchUpdate(batch_size=2, removed=[7], added=[], moved=[(8, 9, MoveDirectionality.SWAP)])
    )
    assert labels() == {5: "a", 1: "b"}


def test_sequence_numbers_follow_the_request_across_moves(tmp_path: Path) -> None:
    proc = make(tmp_path)
    outputs = add(proc, (0, params(qr_label="x")), (1, params(qr_label="y")))
    logits = torch.randn(2, VOCAB)
    proc.apply(logits)
    emitted(logits, outputs)
    proc.update_state(
        BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)])
    )
    outputs = {0: outputs[1], 1: outputs[0]}
    proc.apply(torch.randn(2, VOCAB))
    rows = records(tmp_path, proc)
    seq = {(r["label"], r["sequence_number"]): r["slot"] for r in rows}
    assert seq == {("x", 0): 0, ("y", 0): 1, ("y", 1): 0, ("x", 1): 1}


def test_a_discarded_prefill_sample_shares_the_next_tokens_sequence_number(
    tmp_path: Path,
) -> None:
    """Chunked prefill: vLLM samples a partly prefilled prompt and discards the token
    (nothing is appended to the request's outputs). Its record carries the same
    sequence number as the next step's, which supersedes it, so 'last record per
    (request_serial, sequence_number)' is exactly the emitted tokens."""
    proc = make(tmp_path)
    outputs = add(proc, (0, params(qr_label="chunked")))
    proc.apply(torch.randn(1, VOCAB))  # first prompt chunk: sample discarded
    kept = []
    for _ in range(3):
        logits = torch.randn(1, VOCAB)
        proc.apply(logits)
        emitted(logits, outputs)
        kept.append(outputs[0][-1])
    rows = records(tmp_path, proc)
    assert [r["sequence_number"] for r in rows] == [0, 0, 1, 2]
    latest = {(r["request_serial"], r["sequence_number"]): r["token_id"] for r in rows}
    assert [latest[(rows[0]["request_serial"], i)] for i in range(3)] == kept == outputs[0]


def test_v1_penalties_are_applied_before_selection() -> None:
    proc = make()
    output: list[int] = [10]
    sp = SamplingParams(max_tokens=8, presence_penalty=2.0, extra_args={"qr_top_k": 1})
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, sp, [1], output)], moved=[]))
    logits = torch.zeros(1, VOCAB)
    logits[0, 10] = 1.0  # the top token, already generated once
    logits[0, 11] = 0.5
    proc.apply(logits)
    assert one_hot_token(logits[0]) == 11
    # Without the penalty the same logits give token 10.
    plain = make()
    add(plain, (0, params(qr_top_k=1)))
    logits = torch.zeros(1, VOCAB)
    logits[0, 10] = 1.0
    logits[0, 11] = 0.5
    plain.apply(logits)
    assert one_hot_token(logits[0]) == 10


def test_fallback_is_flagged_per_token(tmp_path: Path) -> None:
    source = FlakySource()
    from qr_entropy import EntropySourceRegistry, FallbackEntropySource

    system = EntropySourceRegistry.get("system")()
    proc = make(tmp_path, source=FallbackEntropySource(source, system))
    add(proc, (0, params()), (1, params()))
    proc.apply(torch.randn(2, VOCAB))
    source.down = True
    logits = torch.randn(2, VOCAB)
    proc.apply(logits)
    for i in range(2):
        one_hot_token(logits[i])
    rows = records(tmp_path, proc)
    assert [r["is_fallback"] for r in rows] == [False, False, True, True]
    assert all("unplugged" in r["fallback_reason"] for r in rows[2:])


def test_error_mode_fails_the_requests_not_the_engine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = FlakySource()
    proc = make(tmp_path, source=source, fallback_mode="error")
    outputs = add(proc, (0, params(eos=5)), (1, params(eos=None)), (2, params(qr_bypass=True)))
    source.down = True
    logits = torch.randn(3, VOCAB)
    original = logits.clone()
    with caplog.at_level(logging.ERROR, logger="qr_sampler"):
        proc.apply(logits)
    emitted(logits, outputs)
    assert one_hot_token(logits[0]) == 5  # ended with its stop token
    assert torch.equal(logits[1], original[1])  # no stop token known: left to vLLM
    assert torch.equal(logits[2], original[2])  # bypass
    assert caplog.text.count("failed: no entropy") == 2
    # The next step keeps ending the failed request without asking the source again.
    source.down = False
    before = len(source.requests)
    logits = torch.randn(3, VOCAB)
    proc.apply(logits)
    emitted(logits, outputs)
    assert one_hot_token(logits[0]) == 5
    assert len(source.requests) == before
    # A new request in a free slot works again.
    proc.update_state(
        BatchUpdate(batch_size=3, removed=[1], added=[(1, params(), [1], [])], moved=[])
    )
    logits = torch.randn(3, VOCAB)
    proc.apply(logits)
    one_hot_token(logits[1])
    rows = records(tmp_path, proc)
    # Step 1: both fail; step 2: both still ended; step 3: the old one ended, the new one ok.
    assert [r["status"] for r in rows] == ["failed"] * 5 + ["ok"]
    assert [r["sequence_number"] for r in rows] == [0, 0, 1, 1, 2, 0]
    assert rows[0]["token_id"] == 5
    # No record says -1: a row left to vLLM has no token of ours, and says so.
    assert rows[1]["token_id"] is None
    assert "vLLM's own sampler chose this token" in rows[1]["error"]
    assert all(r["token_id"] is not None for r in rows if "own sampler" not in r["error"])
    assert "device unplugged" in rows[0]["error"]
    assert proc.health()["failed_requests"] == 2


def test_unexpected_errors_are_logged_and_fail_the_step(caplog: pytest.LogCaptureFixture) -> None:
    proc = make()
    add(proc, (0, params()))
    logits = torch.randn(1, VOCAB)
    logits[0, 3] = float("nan")  # qr_core refuses NaN logits
    with caplog.at_level(logging.ERROR, logger="qr_sampler"):
        proc.apply(logits)
    assert "failed unexpectedly" in caplog.text
    assert one_hot_token(logits[0]) == 5


def test_validate_params_refuses_bad_keys_and_values() -> None:
    QRSamplerLogitsProcessor.validate_params(params(qr_top_k=3))
    QRSamplerLogitsProcessor.validate_params(SamplingParams(extra_args={"other": 1}))
    with pytest.raises(ValueError, match=r"qr_top_p=2\.0"):
        QRSamplerLogitsProcessor.validate_params(params(qr_top_p=2.0))
    with pytest.raises(ConfigValidationError, match="infrastructure"):
        QRSamplerLogitsProcessor.validate_params(params(qr_entropy_source_type="system"))
    with pytest.raises(ConfigValidationError, match=r"temperature_strategy='hot'.*fixed"):
        QRSamplerLogitsProcessor.validate_params(params(qr_temperature_strategy="hot"))


def test_bad_arguments_that_slip_past_admission_fail_the_request(tmp_path: Path) -> None:
    proc = make(tmp_path)
    add(proc, (0, params(qr_top_p=7.0)))
    logits = torch.randn(1, VOCAB)
    proc.apply(logits)
    assert one_hot_token(logits[0]) == 5
    assert records(tmp_path, proc)[0]["status"] == "failed"


def test_diagnostics_and_health(tmp_path: Path) -> None:
    proc = make(tmp_path)
    add(proc, (0, params(qr_diagnostic_mode=True, qr_log_level="full")), (1, params()))
    proc.apply(torch.randn(2, VOCAB))
    assert len(proc.diagnostic_records) == 1
    health = proc.health()
    assert health["tokens"] == 2
    assert health["active_requests"] == 2
    assert not proc.is_argmax_invariant()
    proc.close()
    proc.close()


def test_buffers_grow_with_the_batch() -> None:
    proc = make()
    for size in (1, 3, 20):
        add(proc, *[(i, params(qr_top_k=5 * (i % 2))) for i in range(size)])
        rows = np.arange(size + 2)  # two foreign rows after ours
        logits = torch.randn(len(rows), VOCAB)
        original = logits.clone()
        proc.apply(logits)
        for i in range(size):
            one_hot_token(logits[i])
        assert torch.equal(logits[size:], original[size:])
    assert proc._sampler._buffers.capacity >= 20


# --- runner V2 -----------------------------------------------------------------


def v2_state(max_reqs: int = 8) -> LogitsProcRequestState:
    # The processor reads only .device; the token buffers are the runner's (not used here).
    return LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=max_reqs,
        vocab_size=VOCAB,
        all_token_ids=None,
        prompt_len=None,
        prefill_len=None,
        total_len=None,
    )


def ctx(slots: list[int], rows: list[int] | None = None) -> LogitsContext:
    mapping = torch.as_tensor(rows if rows is not None else slots, dtype=torch.int32)
    return LogitsContext(
        expanded_idx_mapping=mapping,
        idx_mapping=torch.as_tensor(slots, dtype=torch.int32),
        idx_mapping_np=np.asarray(slots, dtype=np.int32),
        expanded_local_pos=torch.zeros(len(mapping), dtype=torch.int32),
        input_ids=torch.zeros(len(mapping), dtype=torch.int64),
        pos=torch.zeros(len(mapping), dtype=torch.int64),
        seq_lens_upper_bound_np=np.ones(len(slots), dtype=np.int32),
    )


def test_v2_rows_are_mapped_through_the_context(tmp_path: Path) -> None:
    config = QRSamplerConfig(
        entropy_source_type="mock_uniform",
        mock_seed=3,
        sample_count=32,
        records_path=tmp_path / "records.jsonl",
    )
    proc = QRSamplerLogitsProcessor(None, v2_state(), config=config)
    assert proc.runner == "v2"
    assert proc.add_request(4, params(qr_top_k=1, qr_label="four"))
    assert not proc.add_request(6, params(qr_bypass=True))
    assert proc.add_request(2, params(qr_top_k=1, qr_label="two"))
    for order in ([6, 2, 4], [4, 6, 2]):
        logits = torch.randn(3, VOCAB)
        original = logits.clone()
        proc.apply(logits, ctx(order))
        for row, slot in enumerate(order):
            if slot == 6:
                assert torch.equal(logits[row], original[row])
            else:
                assert one_hot_token(logits[row]) == int(original[row].argmax())
    rows = records(tmp_path, proc)
    assert [r["label"] for r in rows] == ["two", "four", "four", "two"]
    assert [r["slot"] for r in rows] == [2, 4, 4, 2]
    assert all(r["runner"] == "v2" for r in rows)


def test_v2_expanded_rows_use_the_expanded_mapping() -> None:
    proc = QRSamplerLogitsProcessor(
        None,
        v2_state(),
        config=QRSamplerConfig(entropy_source_type="mock_uniform", sample_count=16),
    )
    proc.add_request(1, params(qr_top_k=1))
    logits = torch.randn(3, VOCAB)
    original = logits.clone()
    proc.apply(logits, ctx([1, 3], rows=[1, 1, 3]))
    assert one_hot_token(logits[0]) == int(original[0].argmax())
    assert one_hot_token(logits[1]) == int(original[1].argmax())
    assert torch.equal(logits[2], original[2])


def test_constructor_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QR_ENTROPY_SOURCE_TYPE", "mock_uniform")
    monkeypatch.setenv("QR_FALLBACK_MODE", "error")
    proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False)
    assert proc.config.entropy_source_type == "mock_uniform"
    assert proc.health()["source"]["source"] == "mock_uniform"  # type: ignore[index]
    proc.close()


def test_namespace_is_enough_for_vllm_config() -> None:
    proc = QRSamplerLogitsProcessor(
        SimpleNamespace(),
        torch.device("cpu"),
        True,
        config=QRSamplerConfig(entropy_source_type="mock_uniform"),
    )
    assert proc._sampler._buffers.pin_memory is False  # pinned buffers only for accelerator devices
