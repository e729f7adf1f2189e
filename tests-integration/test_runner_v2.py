"""Runner V2: the class loads through vLLM's own V2 loader and works on CPU tensors.

On CPU vLLM runs runner V1 (V2 needs Triton: see ARCHITECTURE.md, design note
"Runner V2 interface"), so V2 is exercised through its loader functions and
interface, with the runner's request state replaced by a stand-in that holds
only what the loader copies.
"""

from __future__ import annotations

from types import SimpleNamespace

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
