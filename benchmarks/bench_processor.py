"""qr-vllm processor benchmark: one command, every comparison side by side.

Run in the vLLM environment: ``python benchmarks/bench_processor.py [--quick] [--no-e2e]``.

(a) per-step time of the processor's apply (entropy fetch included, ``system``
    source, 20,480 bytes per row) at B ∈ {1, 8, 64}, V ∈ {32000, 151936}, for
    the full vocabulary (k, p) = (0, 1.0) and for (50, 0.9), against vLLM's own
    sampler on the same logits (temperature, then vLLM's TopKTopPSampler) for
    the same (k, p), against one ``amax`` plus one ``fill_`` pass over the
    logits, and against one ``exp`` pass; the step's entropy alone (the fetch with
    its digests and the amplification, part of the processor's time) against
    vLLM's sampler; with the compile time the first processor spent at start
    (``QR_COMPILE``; 0 when off);
(m) the cost of the Prometheus metrics and drift monitor (``QR_METRICS_PORT`` set)
    on the same per-step time at B ∈ {8, 64}, V = 32000: metrics on and off in the
    same run, each round in a new order so that load hits every processor alike,
    with the median of the rounds' on/off ratios, a second metrics-off processor
    as the noise floor (A/A), and the metrics' bookkeeping per step timed alone;
(f) the entropy fetch plus amplification of 64 × 20,480 bytes against reading
    the same bytes from os.urandom;
(g) one step at B = 64 × 20,480 bytes with the per-row digests of the entropy
    block (issue #15) against the same step with the digest step swapped for a
    no-op, and ``row_digests`` alone on such a block;
(b) end-to-end decode tokens/s on the tiny model (see bench_e2e.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def _time(fn: Any, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _best(fns: list[Any], repeat: int) -> list[float]:
    """Best time of each function over ``repeat`` rounds, the functions interleaved.

    On a shared host the best of many rounds is the least disturbed one, and
    interleaving puts every function under the same load.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


#: The (top-k, top-p) settings measured: the full vocabulary, and a common filter.
SETTINGS = ((0, 1.0), (50, 0.9))


def per_step(
    quick: bool,
) -> tuple[list[tuple[int, int, int, float, float, float, float, float, float]], float]:
    """Per-step times, and the seconds the first processor spent compiling at start."""
    import torch

    # vLLM's sampler needs vLLM's compiled kernels, which an engine loads at start and
    # the processor no longer loads at import (it imports vLLM's penalties lazily).
    import vllm._custom_ops  # noqa: F401
    from qr_core import AmplifierRegistry
    from qr_entropy import EntropySourceRegistry
    from qr_vllm import QRSamplerConfig
    from qr_vllm._fetch import fetch_within
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    # The step's entropy alone: the fetch (digests included) and the amplification of
    # the same rows, as the processor does them with its defaults.
    source = EntropySourceRegistry.get("system")()
    amplifier = AmplifierRegistry.build("randomized_pit")
    row_bytes = amplifier.row_bytes(QRSamplerConfig().sample_count)
    torch.manual_seed(0)
    sizes = [(b, v) for v in (32000, 151936) for b in (1, 8, 64)]
    rows = []
    compile_s = -1.0
    vllm_sampler = TopKTopPSampler()
    # vLLM runs its steps under inference mode, on logits made there: so does this.
    with torch.inference_mode():
        for top_k, top_p in SETTINGS:
            for b, v in sizes:
                repeat = 5 if quick else 30
                if b * v > 4_000_000:
                    repeat = 3 if quick else 15
                config = QRSamplerConfig(
                    entropy_source_type="system", log_level="none", top_k=top_k, top_p=top_p
                )
                proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)
                if compile_s < 0:
                    compile_s = proc.compile_s
                params = SamplingParams(max_tokens=1)
                proc.update_state(
                    BatchUpdate(
                        batch_size=b,
                        removed=[],
                        added=[(i, params, [1], []) for i in range(b)],
                        moved=[],
                    )
                )
                base = torch.randn(b, v) * 3
                work = base.clone()
                spare = torch.empty_like(base)
                k = torch.full((b,), top_k, dtype=torch.int64) if top_k else None
                p = torch.full((b,), top_p) if top_p < 1 else None
                temp = torch.full((b,), 0.7)

                def ours(work: Any = work, base: Any = base, proc: Any = proc) -> None:
                    work.copy_(base)
                    proc.apply(work)

                def theirs(
                    work: Any = work, base: Any = base, k: Any = k, p: Any = p, temp: Any = temp
                ) -> None:
                    work.copy_(base)
                    logits = work.div_(temp.unsqueeze(1))
                    vllm_sampler(logits, {}, k, p)

                def amax_fill(work: Any = work, base: Any = base) -> None:
                    work.copy_(base)
                    torch.amax(work, dim=1)
                    work.fill_(0.0)

                def exp_pass(work: Any = work, base: Any = base, spare: Any = spare) -> None:
                    work.copy_(base)
                    torch.exp(work, out=spare)

                def entropy(work: Any = work, base: Any = base, b: int = b) -> None:
                    work.copy_(base)
                    amplifier.amplify_batch(fetch_within(source, b, row_bytes).data)

                copy, *times = _best(
                    [
                        lambda work=work, base=base: work.copy_(base),
                        ours,
                        theirs,
                        amax_fill,
                        exp_pass,
                        entropy,
                    ],
                    repeat,
                )
                t_ours, t_vllm, t_pass, t_exp, t_entropy = (t - copy for t in times)
                rows.append((top_k, b, v, top_p, t_ours, t_vllm, t_pass, t_exp, t_entropy))
                proc.close()
    return rows, compile_s


def metrics_work(b: int) -> float:
    """Seconds of metrics bookkeeping per step of ``b`` rows, timed alone (many steps)."""
    import numpy as np
    from qr_entropy import EntropySourceRegistry
    from qr_vllm._drift import DriftMonitor
    from qr_vllm._metrics import SamplerMetrics
    from qr_vllm._records import EngineIdentity, RequestInfo, StepRecords

    info = RequestInfo(
        1, "", "", "0" * 16, "fixed", "zscore_mean", "default", 20480, 0, 50, 0.9, 0.0, False,
        False,
    )  # fmt: skip
    values = np.random.default_rng(0).normal(size=(b, 9))
    values[:, 7] = np.where(np.arange(b) % 2, 1.0, -1.0)  # z that sum to 0: no drift warning
    step = StepRecords(
        runner="v1", requests=(info,) * b, slots=np.arange(b), sequence_numbers=np.zeros(b, int),
        values=values, token_ids=np.zeros(b, int), status="ok", error="",
        entropy_source="system", is_fallback=False, fallback_reason="", health="not_tested",
        device_id="", fetch_latency_ns=500_000, generated_at_ns=0, timestamp_ns=0,
        engine=EngineIdentity("0" * 32, None),
    )  # fmt: skip
    metrics = SamplerMetrics(EntropySourceRegistry.get("system")(), DriftMonitor(10_000, 4.0))
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        begun = time.perf_counter_ns()
        metrics.observe_step(step)
        metrics.observe_step_time((time.perf_counter_ns() - begun) / 1e9)
    return (time.perf_counter() - started) / n


def metrics_cost(quick: bool) -> list[tuple[int, float, float, float, float]]:
    """Per B: median step with metrics on, off, the median of the on/off ratios of the
    same round, and the same for a second metrics-off processor (the noise floor, A/A).

    The three processors run once per round, in every order in turn, so that neither
    load nor position favours one.
    """
    import itertools
    import socket

    import torch
    from qr_vllm import QRSamplerConfig
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    torch.manual_seed(0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    rows = []
    orders = list(itertools.permutations(range(3)))
    for b in (8, 64):
        repeat = (60 if quick else 600) if b <= 8 else (24 if quick else 180)
        procs = []
        for metrics_port in (port, 0, 0):
            config = QRSamplerConfig(
                entropy_source_type="system",
                log_level="none",
                top_k=50,
                top_p=0.9,
                metrics_port=metrics_port,
            )
            proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)
            added = [(i, SamplingParams(max_tokens=1), [1], []) for i in range(b)]
            proc.update_state(BatchUpdate(batch_size=b, removed=[], added=added, moved=[]))
            procs.append(proc)
        base = torch.randn(b, 32000) * 3
        work = base.clone()
        samples: list[list[float]] = [[], [], []]
        for proc in procs:  # warm-up
            work.copy_(base)
            proc.apply(work)
        for i in range(repeat):
            for which in orders[i % len(orders)]:
                work.copy_(base)
                started = time.perf_counter()
                procs[which].apply(work)
                samples[which].append(time.perf_counter() - started)
        on, off, other = samples
        rows.append(
            (
                b,
                statistics.median(on),
                statistics.median(off),
                statistics.median([a / c for a, c in zip(on, off, strict=True)]),
                statistics.median([a / c for a, c in zip(other, off, strict=True)]),
            )
        )
        for proc in procs:
            proc.close()
    return rows


def fetch_vs_urandom(quick: bool) -> tuple[float, float, float]:
    """Fetch + amplify 64 x 20,480 S bytes with zscore_mean and randomized_pit, and os.urandom."""
    from qr_core import AmplifierRegistry
    from qr_entropy import EntropySourceRegistry

    source = EntropySourceRegistry.get("system")()
    old = AmplifierRegistry.build("zscore_mean")
    new = AmplifierRegistry.build("randomized_pit")
    rows, n = 64, 20480
    repeat = 10 if quick else 50
    new.amplify_batch(source.fetch_block(rows, new.row_bytes(n)).data)  # builds its CDF table

    def ours_old() -> None:
        old.amplify_batch(source.fetch_block(rows, n).data)

    def ours_new() -> None:
        new.amplify_batch(source.fetch_block(rows, new.row_bytes(n)).data)

    return (
        _time(ours_old, repeat),
        _time(ours_new, repeat),
        _time(lambda: os.urandom(rows * n), repeat),
    )


def _best_one(fn: Any, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def digest_cost(quick: bool) -> list[tuple[int, float, float, float, float]]:
    """(g) One step at batch 64 x 20,480 bytes with and without the per-row digests.

    "Without" swaps qr_entropy's row digest step for a no-op in this process, so the two
    columns differ by exactly the digests. The rounds alternate, and each column is the
    fastest step seen: on a shared machine the other tenants only ever add time, so the
    minimum is the steadiest estimate of the step's own cost.
    Also times `row_digests` alone on the same block.
    """
    import numpy as np
    import qr_entropy._base as base_module
    import torch
    from qr_entropy import row_digests
    from qr_vllm import QRSamplerConfig
    from qr_vllm.processor import QRSamplerLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    b, n = 64, 20480
    repeat = 5 if quick else 20
    rows = []
    for v in (32000, 151936):
        config = QRSamplerConfig(
            entropy_source_type="system", log_level="none", top_k=50, top_p=0.9
        )
        proc = QRSamplerLogitsProcessor(None, torch.device("cpu"), False, config=config)
        params = SamplingParams(max_tokens=1)
        added = [(i, params, [1], []) for i in range(b)]
        proc.update_state(BatchUpdate(batch_size=b, removed=[], added=added, moved=[]))
        base = torch.randn(b, v) * 3
        work = base.clone()

        def step(work: Any = work, base: Any = base, proc: Any = proc) -> None:
            work.copy_(base)
            proc.apply(work)

        with_d, without_d = [], []
        for _ in range(3 if quick else 7):
            with_d.append(_best_one(step, repeat))
            base_module.row_digests = lambda block: ()  # type: ignore[assignment]
            try:
                without_d.append(_best_one(step, repeat))
            finally:
                base_module.row_digests = row_digests
        proc.close()
        block = np.frombuffer(os.urandom(b * n), dtype=np.uint8).reshape(b, n)
        alone = _time(lambda block=block: row_digests(block), repeat * 5)
        rows.append((v, min(with_d), min(without_d), min(with_d) / min(without_d), alone))
    return rows


def _print_digest_cost(quick: bool) -> None:
    print("\n(g) one step at B=64 x 20,480 bytes with and without row digests, ms")
    print(f"{'V':>7} {'with':>9} {'without':>9} {'ratio':>6} {'row_digests alone':>18}")
    for v, with_d, without_d, ratio, alone in digest_cost(quick):
        print(
            f"{v:>7} {with_d * 1e3:>9.3f} {without_d * 1e3:>9.3f} {ratio:>6.2f} "
            f"{alone * 1e3:>18.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, short e2e run")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end engines")
    parser.add_argument("--digests-only", action="store_true", help="run only (g)")
    args = parser.parse_args()
    if args.digests_only:
        _print_digest_cost(args.quick)
        return

    from qr_core import COMPILE_ENV
    from qr_core._compiled import mode

    steps, compile_s = per_step(args.quick)
    print(
        f"(a) per-step time on CPU, ms, best of interleaved rounds, the logits copy subtracted "
        f"(20,480 bytes/row, system source, {COMPILE_ENV}={mode()}; "
        f"compile time at processor start: {compile_s:.1f} s)"
    )
    print(
        f"{'k':>3} {'p':>4} {'B':>3} {'V':>7} {'qr-vllm':>9} {'vLLM sampler':>13} {'ratio':>6} "
        f"{'amax+fill_':>11} {'ratio':>6} {'exp pass':>9} {'ratio':>6} {'entropy':>8} "
        f"{'/ vLLM':>7}"
    )
    for k, b, v, p, ours, vllm_t, one, exp_t, entropy_t in steps:
        print(
            f"{k:>3} {p:>4} {b:>3} {v:>7} {ours * 1e3:>9.3f} {vllm_t * 1e3:>13.3f} "
            f"{ours / vllm_t:>6.2f} {one * 1e3:>11.3f} {ours / one:>6.1f} "
            f"{exp_t * 1e3:>9.3f} {ours / exp_t:>6.1f} {entropy_t * 1e3:>8.3f} "
            f"{entropy_t / vllm_t:>7.2f}"
        )
    print(
        "entropy: the step's fetch (20,487 bytes/row with its digests) and amplification "
        "alone, part of qr-vllm's time; / vLLM: that part over vLLM's whole sampler"
    )
    cost = metrics_cost(args.quick)
    print("\n(m) per-step time with metrics on vs off, ms (V=32000, same run, alternating)")
    print(
        f"{'B':>3} {'metrics on':>11} {'metrics off':>12} {'paired':>7} {'A/A':>6} "
        f"{'metrics work':>13} {'work/step':>10}"
    )
    for b, on, off, paired, floor in cost:
        work = metrics_work(b)
        print(
            f"{b:>3} {on * 1e3:>11.3f} {off * 1e3:>12.3f} {paired:>7.3f} {floor:>6.3f} "
            f"{work * 1e3:>13.4f} {work / off:>9.2%}"
        )
    print(
        "paired: median over rounds of on/off; A/A: the same for a second metrics-off "
        "processor against the first (the noise floor); metrics work: the bookkeeping of "
        "one step timed alone"
    )
    old_f, new_f, urandom_f = fetch_vs_urandom(args.quick)
    print("\n(f) 64 x 20,480 bytes: fetch + amplification vs os.urandom, ms")
    for name, ours_f in (("zscore_mean", old_f), ("randomized_pit (+7 B/row)", new_f)):
        print(
            f"{name:<26} fetch+amplify {ours_f * 1e3:.3f}   os.urandom {urandom_f * 1e3:.3f}   "
            f"ratio {ours_f / urandom_f:.2f}"
        )
    print(f"randomized_pit / zscore_mean: {new_f / old_f:.2f}")
    _print_digest_cost(args.quick)
    if not args.no_e2e:
        import bench_e2e

        bench_e2e.print_table(bench_e2e.run(args.quick))


if __name__ == "__main__":
    main()
