"""End-to-end decode throughput on the tiny model: native sampling vs qr-vllm.

Run in the vLLM environment: ``python benchmarks/bench_e2e.py [--quick]``.
Prints tokens/s at batch 1, 8 and 32 for vLLM's own sampling (requests with
``qr_bypass``), qr-vllm with the ``system`` source, and qr-vllm with the
reference gRPC server over a Unix socket (bidi), side by side with ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def _throughput(llm: Any, batch: int, max_tokens: int, extra: dict[str, Any] | None) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra)
    prompts = [f"Once upon a time {i}" for i in range(batch)]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


@contextlib.contextmanager
def _engine(model: str, env: dict[str, str]) -> Any:
    from vllm import LLM

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        llm = LLM(model=model, dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
        yield llm
    finally:
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(quick: bool) -> list[tuple[int, float, float, float]]:
    """Rows of (batch, native tok/s, system tok/s, grpc tok/s)."""
    from qr_vllm import build_tiny_model
    from qr_vllm._entropy_server import EntropyServerProcess

    model = str(build_tiny_model())
    batches = (1, 8) if quick else (1, 8, 32)
    max_tokens = 16 if quick else 64
    native: dict[int, float] = {}
    system: dict[int, float] = {}
    grpc: dict[int, float] = {}
    with _engine(model, {"QR_ENTROPY_SOURCE_TYPE": "system", "QR_LOG_LEVEL": "none"}) as llm:
        for b in batches:
            native[b] = _throughput(llm, b, max_tokens, {"qr_bypass": True})
            system[b] = _throughput(llm, b, max_tokens, None)
    with EntropyServerProcess() as server:
        env = {**server.environment("bidi_streaming"), "QR_LOG_LEVEL": "none"}
        with _engine(model, env) as llm:
            for b in batches:
                grpc[b] = _throughput(llm, b, max_tokens, None)
    return [(b, native[b], system[b], grpc[b]) for b in batches]


def print_table(rows: list[tuple[int, float, float, float]]) -> None:
    print("\n(b) end-to-end decode, tiny model, tokens/s (ratio to native)")
    print(f"{'batch':>5} {'native':>10} {'qr system':>18} {'qr gRPC unix bidi':>20}")
    for b, n, s, g in rows:
        print(f"{b:>5} {n:>10.1f} {s:>10.1f} ({s / n:4.2f}x) {g:>12.1f} ({g / n:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8, 16 tokens")
    args = parser.parse_args()
    print_table(run(args.quick))


if __name__ == "__main__":
    main()
