"""Runner V2: the class loads through vLLM's own V2 loader and works on CPU tensors.

On CPU vLLM runs runner V1 (V2 needs Triton: see ARCHITECTURE.md, design note
"Runner V2 interface"), so V2 is exercised through its loader functions and
interface, with the runner's request state replaced by a stand-in that holds
only what the loader copies.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.torch]


def test_v2_loader_builds_the_processor_and_rows_are_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsContext,
        build_custom_logits_processors,
        build_custom_logits_processors_params_validator,
    )

    monkeypatch.setenv("QR_ENTROPY_SOURCE_TYPE", "mock_uniform")
    monkeypatch.setenv("QR_SAMPLE_COUNT", "128")
    req_states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=8,
        vocab_size=500,
        all_token_ids=None,
        prompt_len=None,
        prefill_len=None,
        total_len=None,
    )
    processors = build_custom_logits_processors(None, req_states, is_pooling_model=False)
    ours = [p for p in processors if isinstance(p, QRSamplerLogitsProcessor)]
    assert len(ours) == 1
    proc = ours[0]
    assert proc.runner == "v2"

    validate = build_custom_logits_processors_params_validator(None)
    validate(SamplingParams(extra_args={"qr_top_k": 1}))
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="qr_top_k='x'"):
        validate(SamplingParams(extra_args={"qr_top_k": "x"}))

    assert proc.add_request(3, SamplingParams(extra_args={"qr_top_k": 1}))
    assert proc.add_request(0, SamplingParams(extra_args={"qr_top_k": 1}))
    assert not proc.add_request(5, SamplingParams(extra_args={"qr_bypass": True}))
    for order in ([5, 0, 3], [3, 5, 0], [0, 3, 5]):
        mapping = torch.as_tensor(order, dtype=torch.int32)
        ctx = LogitsContext(
            expanded_idx_mapping=mapping,
            idx_mapping=mapping,
            idx_mapping_np=np.asarray(order, dtype=np.int32),
            expanded_local_pos=torch.zeros(3, dtype=torch.int32),
            input_ids=torch.zeros(3, dtype=torch.int64),
            pos=torch.zeros(3, dtype=torch.int64),
            seq_lens_upper_bound_np=np.ones(3, dtype=np.int32),
        )
        logits = torch.randn(3, 500)
        original = logits.clone()
        out = proc.apply(logits, ctx)
        for row, slot in enumerate(order):
            if slot == 5:
                assert torch.equal(out[row], original[row])
            else:
                assert int(torch.isfinite(out[row]).sum()) == 1
                assert int(out[row].argmax()) == int(original[row].argmax())
    proc.close()


def test_v1_loader_accepts_the_same_class() -> None:
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Base
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Base

    assert issubclass(QRSamplerLogitsProcessor, V1Base)
    assert issubclass(QRSamplerLogitsProcessor, V2Base)


class _Request:
    """A request as the V2 model runner keeps it: prompt, outputs, tokens computed."""

    def __init__(self, label: str, prompt: int) -> None:
        self.label = label
        self.prompt = prompt
        self.outputs: list[int] = []
        self.computed = 0
        self.prefill = prompt
        self.slot = -1


def test_v2_records_follow_vllms_lengths_through_chunked_prefill_and_preemption(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """One record per emitted token, numbered by its position, one identity per request.

    The runner's steps are replayed as vLLM's V2 runner makes them (its request
    state's host copies of prompt and prefill lengths, the step's sequence lengths
    in the LogitsContext): a prompt prefilled in chunks (vLLM samples a token for
    each partial chunk and discards it), and a request preempted after three tokens
    and re-added as new with its output so far as part of its prefill.
    """
    import json

    import torch
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsContext,
        build_custom_logits_processors,
    )

    records_path = tmp_path / "records.jsonl"
    monkeypatch.setenv("QR_ENTROPY_SOURCE_TYPE", "mock_uniform")
    monkeypatch.setenv("QR_SAMPLE_COUNT", "64")
    monkeypatch.setenv("QR_RECORDS_PATH", str(records_path))
    vocab, slots = 500, 4
    prompt_len = SimpleNamespace(np=np.zeros(slots, dtype=np.int32))
    prefill_len = SimpleNamespace(np=np.zeros(slots, dtype=np.int32))
    req_states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=slots,
        vocab_size=vocab,
        all_token_ids=None,
        prompt_len=prompt_len,
        prefill_len=prefill_len,
        total_len=None,
    )
    (proc,) = [
        p
        for p in build_custom_logits_processors(None, req_states, is_pooling_model=False)
        if isinstance(p, QRSamplerLogitsProcessor)
    ]
    free = list(range(slots))

    def add(req: _Request) -> None:
        # As the runner does: its request state first, then the processors.
        req.slot = free.pop()
        prompt_len.np[req.slot] = req.prompt
        prefill_len.np[req.slot] = req.prefill
        req.computed = 0
        assert proc.add_request(req.slot, SamplingParams(extra_args={"qr_label": req.label}))

    def step(batch: list[tuple[_Request, int]], gen: torch.Generator) -> None:
        for req, new_tokens in batch:
            req.computed += new_tokens
        order = np.asarray([req.slot for req, _ in batch], dtype=np.int32)
        mapping = torch.as_tensor(order)
        n = len(batch)
        ctx = LogitsContext(
            expanded_idx_mapping=mapping,
            idx_mapping=mapping,
            idx_mapping_np=order,
            expanded_local_pos=torch.zeros(n, dtype=torch.int32),
            input_ids=torch.zeros(n, dtype=torch.int64),
            pos=torch.zeros(n, dtype=torch.int64),
            seq_lens_upper_bound_np=np.asarray([r.computed for r, _ in batch], dtype=np.int32),
        )
        logits = torch.randn(n, vocab, generator=gen) * 3
        original = logits.clone()
        proc.apply(logits, ctx)
        for row, (req, _) in enumerate(batch):
            if req.computed < req.prefill:
                # A partial prefill: vLLM discards this row's sample; the processor left it.
                assert torch.equal(logits[row], original[row])
                continue
            assert int(torch.isfinite(logits[row]).sum()) == 1
            req.outputs.append(int(logits[row].argmax()))

    gen = torch.Generator().manual_seed(0)
    a, b, c = _Request("a", 7), _Request("b", 2), _Request("c", 3)
    add(a)
    add(b)
    step([(a, 3), (b, 2)], gen)  # a: partial prefill (3 of 7); b: prefilled, token 0
    step([(a, 3), (b, 1)], gen)  # a: partial prefill (6 of 7); b: token 1
    step([(a, 1), (b, 1)], gen)  # a: prefilled, token 0; b: token 2
    # b is preempted (V2 tells processors nothing), c takes its slot.
    free.append(b.slot)
    add(c)
    step([(a, 1), (c, 3)], gen)
    step([(c, 1), (a, 1)], gen)
    # b resumes: re-added as new, its three tokens part of a prefill of 5, in two chunks.
    b.prefill = b.prompt + len(b.outputs)
    free.append(c.slot)  # c finished
    add(b)
    step([(b, 4), (a, 1)], gen)  # b: partial (4 of 5)
    step([(a, 1), (b, 1)], gen)  # b: prefilled again, its token 3
    step([(b, 1)], gen)

    proc.close()
    rows = [json.loads(line) for line in records_path.read_text().splitlines()]
    for req in (a, b, c):
        mine = [r for r in rows if r["label"] == req.label]
        assert [r["sequence_number"] for r in mine] == list(range(len(req.outputs))), req.label
        assert [r["token_id"] for r in mine] == req.outputs, req.label
        assert len({r["request_serial"] for r in mine}) == 1, req.label
    assert len(b.outputs) == 5
    assert len(rows) == len(a.outputs) + len(b.outputs) + len(c.outputs)
