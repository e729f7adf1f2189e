"""Offline ``LLM.generate`` with the processor loaded through its entry point (runner V1)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records

pytestmark = pytest.mark.vllm

PROMPTS = ["The quick brown fox", "Once upon a time", "The weather today is"]


def _params(max_tokens: int = 12, **kwargs: Any) -> Any:
    from vllm import SamplingParams

    extra = {k: v for k, v in kwargs.items() if k.startswith("qr_")}
    rest = {k: v for k, v in kwargs.items() if not k.startswith("qr_")}
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra or None, **rest)


def _generate(llm: Any, prompts: list[str], params: Any) -> list[Any]:
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def test_entry_point_is_what_vllm_loads() -> None:
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

    assert QRSamplerLogitsProcessor in _load_logitsprocs_plugins()


def test_one_record_per_token_and_it_is_the_token_emitted(mock_llm: tuple[Any, Path]) -> None:
    llm, records = mock_llm
    before = len(read_records(records))
    params = [_params(qr_label=f"count-{i}", qr_session="s1") for i in range(len(PROMPTS))]
    outputs = _generate(llm, PROMPTS, params)
    total = sum(len(o.token_ids) for o in outputs)
    rows = read_records(records, before + total)[before:]
    assert len(rows) == total
    for i, out in enumerate(outputs):
        mine = sorted(
            (r for r in rows if r["label"] == f"count-{i}"), key=lambda r: r["sequence_number"]
        )
        assert [r["token_id"] for r in mine] == list(out.token_ids)
        assert [r["sequence_number"] for r in mine] == list(range(len(out.token_ids)))
        assert all(r["session"] == "s1" and r["status"] == "ok" for r in mine)
        assert all(
            r["entropy_source"] == "mock_uniform" and r["sample_count"] == 1024 for r in mine
        )
        assert len({r["request_serial"] for r in mine}) == 1


def test_top_k_one_equals_greedy(mock_llm: tuple[Any, Path]) -> None:
    llm, _ = mock_llm
    greedy = _generate(llm, PROMPTS, _params(temperature=0.0, qr_bypass=True))
    forced = _generate(llm, PROMPTS, _params(qr_top_k=1))
    assert [o.token_ids for o in forced] == [o.token_ids for o in greedy]


def test_bypass_rows_are_untouched_beside_forced_rows(mock_llm: tuple[Any, Path]) -> None:
    llm, records = mock_llm
    native = _params(temperature=1.0, seed=1234, qr_bypass=True, qr_label="bypass")
    alone = _generate(llm, [PROMPTS[0]], [native])[0]
    before = len(read_records(records))
    mixed = _generate(
        llm,
        [PROMPTS[1], PROMPTS[0], PROMPTS[2]],
        [_params(qr_label="qr-a"), native, _params(qr_top_k=1, qr_label="qr-b")],
    )
    # vLLM's own seeded sampling gives the same text whatever else is in the batch.
    assert mixed[1].token_ids == alone.token_ids
    rows = read_records(records, before + len(mixed[0].token_ids) + len(mixed[2].token_ids))[
        before:
    ]
    labels = Counter(r["label"] for r in rows)
    assert labels == {"qr-a": len(mixed[0].token_ids), "qr-b": len(mixed[2].token_ids)}


@pytest.mark.parametrize(
    "penalty", [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 2.0}]
)
def test_each_penalty_stops_repeats(mock_llm: tuple[Any, Path], penalty: dict[str, float]) -> None:
    """Runner V1 applies penalties after non-argmax-invariant processors, where a one-hot
    row would make them no-ops: the processor must apply each one itself (see
    ARCHITECTURE.md, design note "V1 penalties")."""
    llm, _ = mock_llm
    prompts = ["Science is the", "The quick brown", "Once upon"]
    plain = _generate(llm, prompts, _params(max_tokens=24, qr_top_k=1))
    assert any(len(set(o.token_ids)) < len(o.token_ids) for o in plain), "no repeats to stop"
    penalised = _generate(llm, prompts, _params(max_tokens=24, qr_top_k=1, **penalty))
    for out in penalised:
        assert len(set(out.token_ids)) == len(out.token_ids)


def test_a_seed_fixes_the_text_and_another_changes_it(tiny_model: Path, mock_llm: Any) -> None:
    texts = []
    for seed in ("5", "5", "6"):
        with in_process_llm(
            tiny_model,
            QR_ENTROPY_SOURCE_TYPE="mock_uniform",
            QR_MOCK_SEED=seed,
            QR_SAMPLE_COUNT="256",
        ) as llm:
            outs = _generate(
                llm,
                PROMPTS,
                _params(max_tokens=16, qr_top_k=0, qr_top_p=1.0, qr_fixed_temperature=1.0),
            )
            texts.append([o.token_ids for o in outs])
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]
