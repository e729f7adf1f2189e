"""Cost of qr_entropy's guards and health tests on one decode step's block.

Run: uv run --frozen --no-sync python benchmarks/bench_entropy.py [--rows 64] [--n 20480]

Prints, side by side in one run, the median time of os.urandom for rows * n
bytes, SystemEntropySource.fetch_block (guards + provenance), the same bytes
through a health-tested source (SP 800-90B tests on every block) and the
health tests alone, each as a ratio to os.urandom.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from qr_entropy import EntropySource, HealthMonitor, SystemEntropySource


class HealthTestedUrandom(EntropySource):
    """os.urandom marked as a physical source, so fetch_block runs the health tests."""

    health_tested = True

    @property
    def name(self) -> str:
        return "urandom_health_tested"

    def get_random_bytes(self, n: int) -> bytes:
        return os.urandom(n)


def _median_ns(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--n", type=int, default=20480)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    total = args.rows * args.n
    system, tested, monitor = SystemEntropySource(), HealthTestedUrandom(), HealthMonitor()
    sample = np.frombuffer(os.urandom(total), dtype=np.uint8)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("os.urandom", lambda: os.urandom(total)),
        ("system.fetch_block", lambda: system.fetch_block(args.rows, args.n)),
        ("health-tested fetch_block", lambda: tested.fetch_block(args.rows, args.n)),
        (
            "os.urandom + health tests",
            lambda: monitor.test_block(np.frombuffer(os.urandom(total), dtype=np.uint8)),
        ),
        ("health tests alone (warm)", lambda: monitor.test_block(sample)),
    ]
    results = [(label, _median_ns(call, args.repeats)) for label, call in cases]
    baseline = results[0][1]
    print(f"{args.rows} x {args.n} = {total} bytes, median of {args.repeats}")
    print(f"{'case':<28}{'ms':>10}{'vs os.urandom':>16}")
    for label, ns in results:
        print(f"{label:<28}{ns / 1e6:>10.3f}{ns / baseline:>15.2f}x")


if __name__ == "__main__":
    main()
