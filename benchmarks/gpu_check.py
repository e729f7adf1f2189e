"""The GPU check: qr-vllm's hot path on one accelerator, against its targets.

Run in an environment with the packages installed:
``python benchmarks/gpu_check.py`` on one GPU (under 10 minutes), or
``python benchmarks/gpu_check.py --cpu-smoke`` (the same checks, reduced, on the
CPU, with the processor forced onto the accelerator's code path).

It builds everything from the project's own tiny model and reports:

(1) host syncs per steady-state step by call site (CUDA: torch's sync debug mode;
    CPU: the operations that would sync, counted by a TorchDispatchMode), with
    batch-change steps counted apart. Target: at most 1;
(2) entropy requests sent before the step's logits existed on the device: the
    source asks the event recorded after a long kernel chain that made the logits
    whether it has completed. Target: 0;
(3) a CPU recomputation of every token at its recorded u (qr_core on numpy, from
    the logits the step saw). Target: 0 mismatches;
(4) ms per decode step against native sampling at batch 1 and 64, with async
    scheduling on and off (reported; GPU targets: +0.3 ms at batch 1, +10 % at 64);
(5) records against the tokens vLLM returned under chunked prefill and under
    preemption: one record per token, numbered by position. Target: 0 mismatches;
(6) raw logprobs: what a request asking for logprobs gets (the model's own
    distribution, not the one-hot rows). Target: no 0.0 / -inf pattern.

Exit status 1 when a target of (1), (2), (3), (5) or (6) is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

sys.path.insert(0, str(Path(__file__).parent))

from _sync_count import SyncCounter

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


# --- (1) (2) (3): the processor on the device ---------------------------------------


class _WatchedSource:
    """The mock source, asking the logits' event at each request whether it has fired."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.watch: Any = None
        self.early = 0
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fetch_block(self, rows: int, count: int) -> Any:
        self.requests += 1
        if self.watch is not None and not self.watch.query():
            self.early += 1
        return self.inner.fetch_block(rows, count)


def processor_checks(smoke: bool) -> None:
    import numpy as np
    import torch
    from qr_core import TokenSelector
    from qr_entropy import build_entropy_source
    from qr_vllm import QRSamplerConfig
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    rows, vocab, steps = (8, 4096, 6) if smoke else (64, 151936, 30)
    records = Path(tempfile.mkdtemp()) / "records.jsonl"
    config = QRSamplerConfig(
        entropy_source_type="mock_uniform", sample_count=1024, records_path=records
    )
    source = _WatchedSource(build_entropy_source(config))
    proc = QRSamplerLogitsProcessor(
        None, device, cuda, config=config, source=source, device_path=True
    )
    mixes = [{}, {"qr_temperature_strategy": "edt"}, {"qr_top_k": 50, "qr_top_p": 0.9}]
    added = []
    for i in range(rows):
        sp = SamplingParams(max_tokens=steps, extra_args={"qr_label": f"row{i}", **mixes[i % 3]})
        added.append((i, sp, [1, 2, 3], []))
    proc.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))

    gen = torch.Generator(device=device).manual_seed(0)
    ranks = torch.arange(1, vocab + 1, device=device, dtype=torch.float32)
    weight = torch.randn(256, 256, device=device, generator=gen)

    def forward(step: int) -> torch.Tensor:
        # A stand-in forward pass: a long kernel chain, then peaked logits.
        h = torch.randn(256, 256, device=device, generator=gen)
        for _ in range(200 if cuda else 2):
            h = torch.tanh(h @ weight)
        noise = torch.randn(rows, vocab, device=device, generator=gen)
        logits = -1.1 * torch.log(ranks) + 0.4 * noise + h[:1, :1] * 0
        return logits[:, torch.randperm(vocab, device=device, generator=gen)]

    seen: list[Any] = []
    per_step: list[int] = []
    sites: Counter[str] = Counter()
    changes = 0
    for step in range(steps):
        logits = forward(step)
        kept = logits.clone()
        if cuda:
            done = torch.cuda.Event()
            done.record()
            source.watch = done
        plans = proc._sampler.plan_steps
        counter = SyncCounter(cuda, host=_host_tensors(proc))
        with counter:
            proc.apply(logits)
        if proc._sampler.plan_steps != plans:
            changes += 1
        else:
            per_step.append(counter.total)
            sites += counter.sites
        seen.append(kept.cpu().numpy())
    proc._sampler.flush_records()
    assert proc.sampling_logger.sink is not None
    proc.sampling_logger.sink.flush()
    print(f"\n(1) host syncs per steady-state step ({device}, batch {rows}, vocab {vocab})")
    print(f"  steady-state steps {len(per_step)}, batch-change steps {changes} (counted apart)")
    for site, n in sites.most_common():
        print(f"  {n / max(len(per_step), 1):6.2f} per step  {site}")
    check(max(per_step, default=0) <= 1, f"at most 1 sync per step (max {max(per_step)})")

    print("\n(2) entropy requests sent before the logits existed")
    print(f"  requests {source.requests}, early {source.early}")
    check(source.early == 0, "0 early requests")
    rows_read = [json.loads(x) for x in records.read_text().splitlines()]
    order = sum(r["entropy_requested_ns"] < r["logits_ready_ns"] for r in rows_read)
    check(order == 0, f"records: requested after ready in every record ({order} out of order)")

    print("\n(3) CPU recomputation of every token at its recorded u")
    selector = TokenSelector()
    mismatches = 0
    for i, record in enumerate(rows_read):
        logits = seen[i // rows][record["slot"]].astype(np.float64)
        want = selector.select(
            logits,
            temperature=record["temperature"],
            top_k=record["top_k"],
            top_p=record["top_p"],
            min_p=record["min_p"],
            u=record["u"],
        )
        mismatches += int(want.token_id != record["token_id"])
    print(f"  tokens {len(rows_read)}, mismatches {mismatches}")
    check(len(rows_read) == rows * steps and mismatches == 0, "0 token mismatches")
    proc.close()


def _host_tensors(proc: Any) -> list[Any]:
    s = proc._sampler
    return [t for t in (s._buffers._u_host, *s._ring._host) if t is not None]


# --- (4) (5) (6): engines on the tiny model ------------------------------------------


def _llm(model: str, smoke: bool, **kwargs: Any) -> Any:
    from vllm import LLM

    kwargs.setdefault("max_model_len", 256)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("enforce_eager", smoke)
    return LLM(model=model, dtype="float32" if smoke else "auto", **kwargs)


def _ms_per_step(llm: Any, batch: int, tokens: int, extra: dict[str, Any] | None) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, extra_args=extra)
    prompts = [f"Once upon a time {i}" for i in range(batch)]
    llm.generate(prompts, params, use_tqdm=False)
    started = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return (time.perf_counter() - started) * 1e3 / tokens


def timing(model: str, smoke: bool) -> None:
    from qr_vllm.demo._engine import closing_engine, environment

    batches = (1, 4) if smoke else (1, 64)
    tokens = 8 if smoke else 128
    print("\n(4) ms per decode step, native sampling vs qr-vllm (mock source)")
    print(f"  {'async':>5} {'batch':>5} {'native':>9} {'qr-vllm':>9} {'+ms':>8} {'ratio':>6}")
    for async_on in (False,) if smoke else (True, False):
        env = {"QR_ENTROPY_SOURCE_TYPE": "mock_uniform", "QR_LOG_LEVEL": "none"}
        with environment(env):
            llm = _llm(model, smoke, async_scheduling=async_on, max_num_seqs=max(batches))
            with closing_engine(llm):
                for b in batches:
                    native = _ms_per_step(llm, b, tokens, {"qr_bypass": True})
                    qr = _ms_per_step(llm, b, tokens, None)
                    print(
                        f"  {'on' if async_on else 'off':>5} {b:>5} {native:>9.3f} {qr:>9.3f} "
                        f"{qr - native:>+8.3f} {qr / native:>6.2f}"
                    )
    if smoke:
        print("  (async scheduling on: GPU only)")


def records_and_logprobs(model: str, smoke: bool) -> None:
    from qr_vllm.demo._engine import closing_engine, environment, read_records
    from vllm import SamplingParams

    path = Path(tempfile.mkdtemp()) / "records.jsonl"
    env = {"QR_ENTROPY_SOURCE_TYPE": "mock_uniform", "QR_RECORDS_PATH": str(path)}
    n, tokens = (6, 24) if smoke else (24, 40)
    with environment(env):
        # Chunked prefill (prompts longer than a step's token budget) and too few KV
        # blocks for every request's output at once (the scheduler preempts).
        llm = _llm(
            model,
            smoke,
            enable_chunked_prefill=True,
            max_num_batched_tokens=32,
            max_num_seqs=n,
            block_size=32,
            max_model_len=128,
            num_gpu_blocks_override=10 if smoke else 24,
            disable_log_stats=False,
        )
        with closing_engine(llm):
            prompts = [" ".join(f"story {i} part {j}" for j in range(8)) for i in range(n)]
            outs = llm.generate(
                prompts,
                [
                    SamplingParams(
                        max_tokens=tokens, ignore_eos=True, extra_args={"qr_label": f"r{i}"}
                    )
                    for i in range(n)
                ],
                use_tqdm=False,
            )
            preemptions = _counter(llm, "vllm:num_preemptions")
            lp_outs = llm.generate(
                ["Once upon a time"],
                SamplingParams(max_tokens=8, ignore_eos=True, logprobs=1),
                use_tqdm=False,
            )
    expected = sum(len(o.outputs[0].token_ids) for o in outs) + 8
    rows = read_records(path, expected, timeout_s=60)
    print("\n(5) records against tokens under chunked prefill and preemption")
    print(f"  requests {n}, tokens {expected - 8}, preemptions {preemptions}")
    bad = superseded = 0
    for i, out in enumerate(outs):
        mine = [r for r in rows if r["label"] == f"r{i}" and r["status"] == "ok"]
        by_seq: dict[int, dict[str, Any]] = {}
        for r in mine:  # a later record of the same position supersedes (runner V1)
            superseded += int(r["sequence_number"] in by_seq)
            by_seq[r["sequence_number"]] = r
        tokens_got = [by_seq[k]["token_id"] for k in sorted(by_seq)]
        bad += int(sorted(by_seq) != list(range(len(by_seq))))
        bad += int(tokens_got != list(out.outputs[0].token_ids))
    print(f"  superseded partial-prefill records (runner V1 only) {superseded}")
    check(bad == 0, f"one record per token, numbered by position ({bad} requests wrong)")

    print("\n(6) raw logprobs of qr-sampled tokens")
    out = lp_outs[0].outputs[0]
    chosen = [lp[tok].logprob for tok, lp in zip(out.token_ids, out.logprobs or [], strict=False)]
    print(f"  chosen tokens' logprobs: {[round(x, 3) for x in chosen]}")
    check(
        len(chosen) == 8 and all(math.isfinite(x) and x < 0 for x in chosen),
        "the model's own distribution (finite, below 0), not the one-hot rows",
    )


def _counter(llm: Any, name: str) -> str:
    try:
        for metric in llm.get_metrics():
            if metric.name == name:
                return str(int(metric.value))
    except Exception as exc:  # reported, not fatal: the check stands on the records
        return f"n/a ({type(exc).__name__})"
    return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced, on the CPU")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    from qr_vllm.demo import build_tiny_model

    started = time.monotonic()
    model = str(build_tiny_model())
    processor_checks(args.cpu_smoke)
    records_and_logprobs(model, args.cpu_smoke)
    timing(model, args.cpu_smoke)
    print(f"\n{len(FAILURES)} target(s) missed; {time.monotonic() - started:.0f} s")
    for what in FAILURES:
        print(f"  missed: {what}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
