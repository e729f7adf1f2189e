"""Batched token selection per decode step on CPU torch, beside vLLM's own sampler.

Run in the vLLM environment:

    python benchmarks/bench_selection.py           # B in {1, 8, 64}, V in {32000, 151936}
    python benchmarks/bench_selection.py --quick   # one small case, a smoke run

For each case, on the same logits, it times (median of several steps):

* ``floor``: one pass over the logits (a row max), the least any selector must do;
* ``vllm``: vLLM's engine path on CPU: ``Sampler.apply_temperature`` then
  ``TopKTopPSampler`` with k / p tensors (None when disabled, as the engine passes them);
* ``qr_core``: ``TokenSelector().select_batch`` with per-row tensors, validation on.

The logits are random normal times ``--scale`` (default 5): a peaked distribution
like a language model's, where the first head of 256 tokens usually holds u.
The ``head %`` column says how many rows the first head decided; flatter logits
(``--scale 1``) send more rows to the wider head and the full sort.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import qr_core._head as head_module
import torch
from _table import print_table
from qr_core import TokenSelector


def _median_ms(step: Callable[[], object], prepare: Callable[[], None], repeats: int) -> float:
    prepare()
    step()  # warm-up: allocations, lazy imports
    times = []
    for _ in range(repeats):
        prepare()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _head_share(
    selector: TokenSelector, logits: torch.Tensor, params: dict[str, torch.Tensor]
) -> float:
    """Fraction of rows the first head decides (counts rows sent round again)."""
    retried = 0
    original = head_module.filter_rows

    def counting(xp, x, p, head, *, check):  # type: ignore[no-untyped-def]
        nonlocal retried
        if not check:
            retried += x.shape[0]
        return original(xp, x, p, head, check=check)

    head_module.filter_rows = counting
    try:
        selector.select_batch(logits, **params)
    finally:
        head_module.filter_rows = original
    return 1 - retried / logits.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one small case, few repeats (smoke run)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per case (default 7)")
    parser.add_argument(
        "--scale", type=float, default=5.0, help="logit standard deviation (default 5)"
    )
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()

    batches, vocabs, repeats = ((1, 8, 64), (32000, 151936), args.repeats)
    if args.quick:
        batches, vocabs, repeats = (4,), (32000,), 2
    gen = torch.Generator().manual_seed(0)
    rows = []
    for vocab in vocabs:
        for batch in batches:
            logits = torch.randn(batch, vocab, generator=gen) * args.scale
            u = torch.rand(batch, generator=gen, dtype=torch.float64)
            for k, p in ((50, 0.9), (0, 1.0)):
                rows.append(
                    _measure(logits, u, k=k, p=p, temperature=args.temperature, repeats=repeats)
                )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"logits N(0, {args.scale}^2), T={args.temperature}, median of {repeats} steps"
    )
    print_table(
        ["case", "floor ms", "vllm ms", "qr_core ms", "qr/floor", "qr/vllm", "head %"], rows
    )


def _measure(
    logits: torch.Tensor, u: torch.Tensor, *, k: int, p: float, temperature: float, repeats: int
) -> list[str]:
    """Time the floor, vLLM's sampler and qr_core on one block of logits."""
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler
    from vllm.v1.sample.sampler import Sampler

    batch, vocab = logits.shape
    temp = torch.full((batch,), temperature)
    # The engine passes k / p tensors, or None when no request in the batch uses the filter.
    k_t = None if k == 0 else torch.full((batch,), k, dtype=torch.int32)
    p_t = None if p == 1.0 else torch.full((batch,), p, dtype=torch.float32)
    work = torch.empty_like(logits)  # vLLM's sampler changes its input in place
    vllm_sampler = TopKTopPSampler()

    def vllm_step() -> object:
        Sampler.apply_temperature(work, temp, all_random=True)
        return vllm_sampler(work, {}, k_t, p_t)

    def refill() -> None:
        work.copy_(logits)

    def nothing() -> None:
        return None

    selector = TokenSelector()
    params = {
        "temperature": temp.double(),
        "top_k": torch.full((batch,), k, dtype=torch.int64),
        "top_p": torch.full((batch,), p, dtype=torch.float64),
        "u": u,
    }
    floor = _median_ms(lambda: logits.amax(dim=-1), nothing, repeats)
    vllm_ms = _median_ms(vllm_step, refill, repeats)
    ours = _median_ms(lambda: selector.select_batch(logits, **params), nothing, repeats)
    share = _head_share(selector, logits, params)
    return [
        f"B={batch} V={vocab} k={k} p={p}",
        f"{floor:.2f}",
        f"{vllm_ms:.2f}",
        f"{ours:.2f}",
        f"{ours / floor:.1f}x",
        f"{ours / vllm_ms:.2f}x",
        f"{share:.0%}",
    ]


if __name__ == "__main__":
    main()
