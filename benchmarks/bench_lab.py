"""``qr-lab analyze`` over 10⁷ synthetic records, from JSON Lines and from Parquet.

Run in the uv environment (qr-lab needs no torch and no vLLM):

    uv run --frozen --no-sync python benchmarks/bench_lab.py            # 10,000,000 records
    uv run --frozen --no-sync python benchmarks/bench_lab.py --quick    # 1,000,000 records

It writes one synthetic run directory (2 conditions, trials of 10,000 tokens,
records with every field qr-lab reads, 1% fallback tokens) in each format with
DuckDB, then times the whole analysis (``analyze_run``: exclusions, Stouffer
Z, χ², KS of u, the permutation test; the calibration, whose cost does not
grow with the records, is left out) in a fresh process, and reports records/s
and the process's peak resident memory. Target (issue #16): at least 10⁶
records/s from Parquet, under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _table import print_table

TOKENS_PER_TRIAL = 10_000


def _study(trials_per_condition: int) -> dict[str, object]:
    return {
        "study": {"name": "bench", "description": ""},
        "design": {"trials_per_condition": trials_per_condition,
                   "tokens_per_trial": TOKENS_PER_TRIAL, "seed": 1, "blind": True},
        "conditions": [{"name": "test", "predicted": "positive", "description": ""},
                       {"name": "control", "predicted": "none", "description": ""}],
        "analysis": {"primary": "stouffer_z", "condition": "test", "control": "control",
                     "alpha": 0.05, "sidedness": "one-sided", "planned_tokens": None,
                     "exclude": ["superseded_prefill", "failed", "fallback"],
                     "permutations": 10000, "calibration_studies": 0},
    }  # fmt: skip


def make_run(run: Path, records: int, fmt: str) -> None:
    """A run directory of ``records`` synthetic records in ``fmt`` (jsonl or parquet)."""
    import duckdb

    trials = records // TOKENS_PER_TRIAL
    per_condition = trials // 2
    (run / "records").mkdir(parents=True)
    plan = [
        {"trial_id": f"T{i + 1:07d}", "order": i, "condition": "test" if i % 2 else "control",
         "code": "A" if i % 2 else "B", "prompt_index": 0}
        for i in range(2 * per_condition)
    ]  # fmt: skip
    (run / "manifest.json").write_text(json.dumps({
        "study": _study(per_condition), "trials": plan, "blinding": {"A": "test", "B": "control"},
        "registration": {"hash": "0" * 64, "registered_at": "", "versions": {}},
    }))  # fmt: skip
    with open(run / "trials.jsonl", "w") as f:
        for t in plan:
            f.write(json.dumps({**t, "status": "ok", "records_file": None}) + "\n")
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    query = f"""
        SELECT i // {TOKENS_PER_TRIAL} + 1 AS request_serial,
               i % {TOKENS_PER_TRIAL} AS sequence_number,
               printf('T%07d', i // {TOKENS_PER_TRIAL} + 1) AS session,
               CASE WHEN (i // {TOKENS_PER_TRIAL}) % 2 = 1 THEN 'A' ELSE 'B' END AS label,
               'ok' AS status,
               random() AS u,
               sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z_score,
               random() AS token_prob,
               3 * random() AS shannon_entropy,
               i % 100 = 0 AS is_fallback,
               'ok' AS health,
               'system' AS entropy_source,
               0.05 + random() AS entropy_fetch_ms,
               1700000000000000000 + i * 1000 AS timestamp_ns,
               'bench' AS engine_id
        FROM range({trials * TOKENS_PER_TRIAL}) t(i)
    """
    if fmt == "jsonl":
        con.execute(f"COPY ({query}) TO '{run}/records/engine.jsonl' (FORMAT JSON)")
    else:
        con.execute(f"COPY ({query}) TO '{run}/records/engine.parquet' (FORMAT PARQUET)")


def child(run: str) -> None:
    """Time one analysis in this process; print seconds and peak RSS (bytes) as JSON."""
    from qr_lab import analyze_run

    start = time.perf_counter()
    result = analyze_run(run, calibration=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = sum(c["exclusions"][0]["remaining"] for c in result["conditions"].values())
    print(json.dumps({"seconds": seconds, "peak": peak, "records": tokens}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000,000 records")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    records = 1_000_000 if args.quick else args.records
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        for fmt in ("parquet", "jsonl"):
            run = Path(tmp) / fmt
            start = time.perf_counter()
            make_run(run, records, fmt)
            made = time.perf_counter() - start
            size = sum(f.stat().st_size for f in (run / "records").iterdir())
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(run)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            m = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([
                fmt, f"{m['records']:,}", f"{size / 2**20:,.0f}", f"{made:.1f}",
                f"{m['seconds']:.2f}", f"{m['records'] / m['seconds']:,.0f}",
                f"{m['peak'] / 2**30:.2f}",
            ])  # fmt: skip
            shutil.rmtree(run)
    print_table(
        ["format", "records", "MiB on disk", "write s", "analyze s", "records/s", "peak GiB"],
        rows,
    )
    print("target: >= 1,000,000 records/s from Parquet, peak < 2 GiB")


if __name__ == "__main__":
    main()
