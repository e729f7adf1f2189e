"""`qr-vllm replay` on the tiny model: a recorded run replays token for token.

A real in-process engine generates two requests of 32 tokens (64 tokens) with the
seeded mock source and writes records; the same engine then replays them, one
request at a time, with each token's recorded u. Every token matches. A copy of
the records with one token's u changed is reported at exactly that position.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_process_llm, read_records

pytestmark = pytest.mark.vllm

PROMPTS = {"a": "Once upon a time", "b": "The weather today is"}


def test_a_recorded_run_replays_and_a_changed_u_is_reported(
    tiny_model: Path, tmp_path: Path
) -> None:
    from qr_vllm._replay import read_requests, replay_requests
    from vllm import SamplingParams

    records = tmp_path / "run.jsonl"
    with in_process_llm(
        tiny_model,
        QR_ENTROPY_SOURCE_TYPE="mock_uniform",
        QR_MOCK_SEED="5",
        QR_SAMPLE_COUNT="256",
        QR_RECORDS_PATH=str(records),
    ) as llm:
        params = [
            SamplingParams(max_tokens=32, ignore_eos=True, extra_args={"qr_label": label})
            for label in PROMPTS
        ]
        llm.generate(list(PROMPTS.values()), params, use_tqdm=False)
        rows = read_records(records, 64)
        assert len(rows) == 64
        original = tmp_path / "original.jsonl"
        original.write_text("".join(json.dumps(r) + "\n" for r in rows))

        requests = read_requests(original)
        assert [(r.label, len(r.token_ids)) for r in requests] == [("a", 32), ("b", 32)]
        assert replay_requests(llm, requests, PROMPTS) == []

        # Change one u so that it picks another candidate of that token.
        changed = [dict(r) for r in rows]
        target = next(
            i
            for i, r in enumerate(changed)
            if r["label"] == "b" and r["sequence_number"] >= 5 and r["num_candidates"] > 1
        )
        position = changed[target]["sequence_number"]
        changed[target]["u"] = 0.999999 if changed[target]["token_rank"] == 0 else 1e-9
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text("".join(json.dumps(r) + "\n" for r in changed))
        mismatches = replay_requests(llm, read_requests(tampered), PROMPTS)
    assert mismatches
    first = mismatches[0]
    assert (first.label, first.position) == ("b", position)
    assert first.recorded == changed[target]["token_id"]
    assert all(m.label == "b" and m.position >= position for m in mismatches)
