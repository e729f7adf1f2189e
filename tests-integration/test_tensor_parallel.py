"""Tensor parallelism: two real CPU worker processes, entropy from the reference gRPC server.

Every rank of a tensor-parallel group samples and feeds its own tokens to its
next step, so all ranks must choose the same token. Only rank 0 may draw
entropy and write records; the other ranks take each step's u from it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import in_process_llm, read_records
from qr_vllm.demo._entropy_server import EntropyServerProcess

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for 2 ranks"),
]

TOKENS = 24


def _params(max_tokens: int = TOKENS, ignore_eos: bool = True, **extra: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, extra_args=extra or None)


def _kill_after(records: Path, count: int, server: EntropyServerProcess) -> None:
    deadline = time.monotonic() + 60
    while len(read_records(records)) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill()


@pytest.mark.timeout(900)
def test_two_ranks_choose_the_same_tokens_and_rank_0_alone_records(
    tiny_model: Path, tmp_path: Path
) -> None:
    records = tmp_path / "tp.jsonl"
    server = EntropyServerProcess().start()
    try:
        with in_process_llm(
            tiny_model,
            tensor_parallel_size=2,
            QR_RECORDS_PATH=str(records),
            QR_SAMPLE_COUNT="2048",
            QR_GRPC_TIMEOUT_MS="2000",
            QR_FALLBACK_MODE="error",
            QR_LOG_LEVEL="none",
            **server.environment("bidi_streaming"),
        ) as llm:
            prompts = ["Once upon a time", "The weather today is"]
            params = [_params(qr_label=f"tp-{i}") for i in range(len(prompts))]
            outs = llm.generate(prompts, params, use_tqdm=False)
            total = sum(len(o.outputs[0].token_ids) for o in outs)
            assert total == 2 * TOKENS
            time.sleep(0.5)  # a second writer, if there were one, would have caught up
            rows = read_records(records, total)
            # One record per emitted token: only rank 0 writes them.
            assert len(rows) == total
            assert {r["entropy_source"] for r in rows} == {"quantum_grpc"}
            for i, o in enumerate(outs):
                mine = sorted(
                    (r for r in rows if r["label"] == f"tp-{i}"), key=lambda r: r["sequence_number"]
                )
                assert [r["token_id"] for r in mine] == list(o.outputs[0].token_ids)
                assert [r["sequence_number"] for r in mine] == list(range(TOKENS))

            # The source dies mid-generation in error mode: both ranks end the requests
            # with their stop token (a rank that did not would wait for rank 0 forever),
            # and the engine serves on.
            from threading import Thread

            killer = Thread(target=_kill_after, args=(records, total + 10, server), daemon=True)
            killer.start()
            until_stop = _params(max_tokens=200, ignore_eos=False, qr_label="doomed")
            doomed = llm.generate(prompts, until_stop, use_tqdm=False)
            killer.join(5)
            for o in doomed:
                assert len(o.outputs[0].token_ids) < 200
                assert o.outputs[0].finish_reason == "stop"
            failed = [r for r in read_records(records) if r["status"] == "failed"]
            assert failed
            assert {r["label"] for r in failed} == {"doomed"}
            native = llm.generate(prompts, _params(qr_bypass=True), use_tqdm=False)
            assert [len(o.outputs[0].token_ids) for o in native] == [TOKENS, TOKENS]
    finally:
        server.stop()

    # Rank 0's logits at each step match one rank's logits for the same text: had
    # rank 1 chosen other tokens, its half of the attention heads would have attended
    # to a different text from the second step on.
    prompt_ids = list(outs[0].prompt_token_ids)
    tokens = list(outs[0].outputs[0].token_ids)
    ours = sorted((r for r in rows if r["label"] == "tp-0"), key=lambda r: r["sequence_number"])
    replay_records = tmp_path / "one-rank.jsonl"
    with in_process_llm(
        tiny_model,
        QR_ENTROPY_SOURCE_TYPE="mock_uniform",
        QR_RECORDS_PATH=str(replay_records),
        QR_LOG_LEVEL="none",
    ) as one:
        replay = [{"prompt_token_ids": prompt_ids + tokens[:t]} for t in range(TOKENS)]
        labels = [_params(max_tokens=1, qr_label=f"replay-{t}") for t in range(TOKENS)]
        one.generate(replay, labels, use_tqdm=False)
        one_rank = {
            int(r["label"].split("-")[1]): r["shannon_entropy"]
            for r in read_records(replay_records, TOKENS)
        }
    assert sorted(one_rank) == list(range(TOKENS))
    for t, r in enumerate(ours):
        assert r["shannon_entropy"] == pytest.approx(one_rank[t], abs=1e-3), t
