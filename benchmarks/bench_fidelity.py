"""Sampling fidelity of the two amplifiers, computed exactly, and what amplification costs.

    uv run --frozen --no-sync python benchmarks/bench_fidelity.py           # the full table
    uv run --frozen --no-sync python benchmarks/bench_fidelity.py --quick   # 2k only, a smoke run

Table 1: for each vocabulary, filter setting and sample count, the total
variation distance between the distribution the sampler realises under a fair
source (``qr_core.sampling_fidelity``: u's null law integrated, no sampling)
and the intended filtered softmax, for ``zscore_mean`` (a lattice u) and
``randomized_pit`` (a continuous, exactly uniform u), and how many tokens the
old amplifier can never choose (with the mass they should have had).

Vocabularies (seeded): 2k logits ``randn * 3``; 32k Zipf (p proportional to
1 / rank**1.1, ranks shuffled over the ids); 151,936 logits ``randn * 3``.
Filters: off (T = 1), and the defaults (T = 1, top-k 50, top-p 0.9).

Table 2: amplification of 64 rows of 20,480 S bytes, both amplifiers in the
same run (``randomized_pit`` reads 7 more bytes per row for V), median of
repeated calls after one warm-up call (which builds the cached CDF table; its
one-off cost is printed too).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _table import print_table
from qr_core import AmplifierRegistry, sampling_fidelity
from qr_core._byte_sum import byte_sum_cdf

SAMPLE_COUNTS = (1, 16, 1024, 20480)
FILTERS = {"off": {}, "k50 p0.9": {"top_k": 50, "top_p": 0.9}}


def vocabularies(quick: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    vocabs = {"2k randn*3": rng.standard_normal(2000) * 3}
    if quick:
        return vocabs
    zipf = -1.1 * np.log(np.arange(1, 32001, dtype=np.float64))
    rng.shuffle(zipf)
    vocabs["32k Zipf"] = zipf
    vocabs["152k randn*3"] = rng.standard_normal(151936) * 3
    return vocabs


def fidelity_rows(quick: bool) -> list[list[object]]:
    rows: list[list[object]] = []
    for vname, logits in vocabularies(quick).items():
        for fname, settings in FILTERS.items():
            for n in SAMPLE_COUNTS:
                old = sampling_fidelity(logits, sample_count=n, amplifier="zscore_mean", **settings)
                new = sampling_fidelity(logits, sample_count=n, **settings)
                never = (old.realised == 0) & (old.intended > 0)
                rows.append(
                    [
                        vname,
                        fname,
                        n,
                        f"{old.tvd:.3e}",
                        f"{new.tvd:.3e}",
                        int(never.sum()),
                        f"{old.intended[never].sum():.2%}",
                    ]
                )
    return rows


def _median_ms(fn: object, repeats: int) -> float:
    call = fn  # a callable
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cost_rows(quick: bool) -> list[list[object]]:
    rows, n = 64, 20480
    repeats = 20 if quick else 200
    rng = np.random.default_rng(7)
    block = rng.integers(0, 256, size=(rows, n + 7), dtype=np.uint8)
    old = AmplifierRegistry.build("zscore_mean")
    new = AmplifierRegistry.build("randomized_pit")
    old_block = np.ascontiguousarray(block[:, :n])
    byte_sum_cdf.cache_clear()
    start = time.perf_counter()
    new.amplify_batch(block)  # builds the table for n
    table_ms = (time.perf_counter() - start) * 1e3
    old.amplify_batch(old_block)
    # Interleave the two so that load on the machine hits both alike.
    t_old, t_new = [], []
    for _ in range(5):
        t_old.append(_median_ms(lambda: old.amplify_batch(old_block), repeats // 5))
        t_new.append(_median_ms(lambda: new.amplify_batch(block), repeats // 5))
    ms_old, ms_new = statistics.median(t_old), statistics.median(t_new)
    return [
        ["zscore_mean", f"{rows} x {n}", f"{ms_old:.3f}", "1.00x", "-"],
        [
            "randomized_pit",
            f"{rows} x ({n} + 7)",
            f"{ms_new:.3f}",
            f"{ms_new / ms_old:.2f}x",
            f"{table_ms:.1f}",
        ],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2k vocabulary only, fewer repeats")
    args = parser.parse_args()
    print("Total variation distance from the intended distribution under a fair source (exact)")
    print_table(
        [
            "vocabulary",
            "filters",
            "sample_count",
            "TVD zscore_mean",
            "TVD randomized_pit",
            "never chosen (old)",
            "their mass",
        ],
        fidelity_rows(args.quick),
    )
    print("\nAmplification of 64 rows, median ms per call (same run)")
    print_table(
        ["amplifier", "bytes", "ms", "vs zscore_mean", "first call (table) ms"],
        cost_rows(args.quick),
    )


if __name__ == "__main__":
    main()
