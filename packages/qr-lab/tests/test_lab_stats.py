"""The analysis on simulated records equals scipy computed independently; its error rates hold.

Records come from qr_core's z-score amplifier on qr_entropy's mock_uniform bytes
(see _simulate.py); the reference statistics are computed here from the raw
JSON lines with scipy, without qr_lab's code.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from _simulate import simulate_run, study_file
from qr_lab import analyze_run
from qr_lab._calibrate import binomial_interval
from qr_lab._export import export_parquet
from qr_lab._plan import read_manifest
from qr_lab.cli import main
from scipy import stats

SMALL = {"trials_per_condition = 10": "trials_per_condition = 6", "planned_tokens = 160": ""}


def _reference(run: Path) -> dict[str, dict[str, list[float]]]:
    """Per condition: the usable tokens' z and u, and each trial's z list, from the raw files."""
    manifest = read_manifest(run)
    cond_of = {t["trial_id"]: t["condition"] for t in manifest["trials"]}
    latest: dict[tuple[int, int], dict[str, object]] = {}
    for f in sorted((run / "records").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            key = (r["request_serial"], r["sequence_number"])
            if key not in latest or r["timestamp_ns"] >= latest[key]["timestamp_ns"]:  # type: ignore[operator]
                latest[key] = r
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in latest.values():
        if r["status"] != "ok" or r["is_fallback"]:
            continue
        c = cond_of[str(r["session"])]
        out[c]["z"].append(float(r["z_score"]))  # type: ignore[arg-type]
        out[c]["u"].append(float(r["u"]))  # type: ignore[arg-type]
        out[c]["trial:" + str(r["session"])].append(float(r["z_score"]))  # type: ignore[arg-type]
    return out


def test_statistics_equal_scipy_on_seeded_mock_records(tmp_path: Path) -> None:
    path = study_file(tmp_path, SMALL)
    run = simulate_run(path, tmp_path / "run", seed=5, mean_shift={"intention": 0.8},
                       fallback_every=11, superseded_every=13)  # fmt: skip
    result = analyze_run(run)
    ref = _reference(run)
    for cond in ("intention", "control"):
        z, u = np.array(ref[cond]["z"]), np.array(ref[cond]["u"])
        got = result["conditions"][cond]
        assert got["tokens"] == len(z)
        big_z = z.sum() / math.sqrt(len(z))
        assert got["stouffer"]["z"] == pytest.approx(big_z, rel=1e-12)
        if cond == "intention":  # one-sided, predicted positive
            assert got["stouffer"]["p"] == pytest.approx(stats.norm.sf(big_z), rel=1e-9)
        else:  # no predicted direction: two-sided
            assert got["stouffer"]["p"] == pytest.approx(2 * stats.norm.sf(abs(big_z)), rel=1e-9)
        seg = [sum(v) / math.sqrt(len(v)) for k, v in ref[cond].items() if k.startswith("trial:")]
        chi2 = float(np.sum(np.square(seg)))
        assert got["chi2"]["chi2"] == pytest.approx(chi2, rel=1e-12)
        assert got["chi2"]["df"] == len(seg) == 6
        assert got["chi2"]["p"] == pytest.approx(stats.chi2.sf(chi2, len(seg)), rel=1e-9)
        ks = stats.kstest(u, "uniform")
        assert got["ks_u"]["d"] == pytest.approx(ks.statistic, rel=1e-12)
        assert got["ks_u"]["p"] == pytest.approx(ks.pvalue, rel=1e-9)
        assert got["mean_z"]["mean"] == pytest.approx(z.mean(), rel=1e-12)
        half = 1.959963984540054 * z.std(ddof=1) / math.sqrt(len(z))
        assert got["mean_z"]["low"] == pytest.approx(z.mean() - half, rel=1e-9)

    def trial_means(cond: str) -> np.ndarray:
        return np.array([np.mean(v) for k, v in ref[cond].items() if k.startswith("trial:")])

    perm = stats.permutation_test(
        (trial_means("intention"), trial_means("control")),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        vectorized=True,
        n_resamples=10_000,
        alternative="greater",
    )
    d = result["difference"]
    assert d["exact"]  # C(12, 6) = 924 splits <= 10,000 permutations: both enumerate them all
    assert d["difference"] == pytest.approx(perm.statistic, rel=1e-12)
    assert d["p"] == pytest.approx(perm.pvalue, rel=1e-12)
    assert result["primary"]["statistic"] == "stouffer_z"
    assert result["primary"]["p"] == result["conditions"]["intention"]["stouffer"]["p"]


def test_exclusions_are_counted_as_declared(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    run = simulate_run(path, tmp_path / "run", seed=9, fallback_every=7, superseded_every=10,
                       failed_trials=3)  # fmt: skip
    manifest = read_manifest(run)
    cond_of = {t["trial_id"]: t["condition"] for t in manifest["trials"]}
    rows = [json.loads(x) for x in (run / "records" / "sim.jsonl").read_text().splitlines()]
    result = analyze_run(run, calibration=False)
    for cond in ("intention", "control"):
        mine = [r for r in rows if cond_of[r["session"]] == cond]
        keys: dict[tuple[int, int], int] = defaultdict(int)
        for r in mine:
            keys[(r["request_serial"], r["sequence_number"])] += 1
        superseded = sum(n - 1 for n in keys.values())
        kept = {(r["request_serial"], r["sequence_number"]): r for r in sorted(
            mine, key=lambda r: r["timestamp_ns"])}.values()  # fmt: skip
        failed = sum(1 for r in kept if r["status"] != "ok")
        fallback = sum(1 for r in kept if r["status"] == "ok" and r["is_fallback"])
        steps = {s["step"]: s for s in result["conditions"][cond]["exclusions"]}
        assert steps["records"]["remaining"] == len(mine)
        assert steps["superseded_prefill"]["excluded"] == superseded > 0
        assert steps["failed"]["excluded"] == failed
        assert steps["fallback"]["excluded"] == fallback > 0
        remaining = len(mine) - superseded - failed - fallback
        assert steps["fallback"]["remaining"] == remaining
        # The plan (160 tokens) is not reached, so nothing is cut.
        assert steps["beyond_plan"]["excluded"] == 0
        assert result["conditions"][cond]["tokens"] == remaining
    assert sum(steps_failed for steps_failed in (
        {s["step"]: s for s in result["conditions"][c]["exclusions"]}["failed"]["excluded"]
        for c in ("intention", "control"))) == 3 * 16  # fmt: skip


def test_the_planned_token_count_cuts_in_trial_order(tmp_path: Path) -> None:
    path = study_file(tmp_path, {"planned_tokens = 160": "planned_tokens = 100"})
    run = simulate_run(path, tmp_path / "run", seed=2)
    result = analyze_run(run, calibration=False)
    for cond in ("intention", "control"):
        c = result["conditions"][cond]
        assert c["tokens"] == 100
        assert c["exclusions"][-1] == {"step": "beyond_plan", "remaining": 100, "excluded": 60}
        assert c["trials"] == 7  # six whole trials of 16, and 4 tokens of the seventh


def test_parquet_and_export_give_the_same_analysis(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    jsonl = simulate_run(path, tmp_path / "a", seed=4, superseded_every=9)
    parquet = simulate_run(path, tmp_path / "b", seed=4, superseded_every=9, fmt="parquet")
    a = analyze_run(jsonl, calibration=False)
    b = analyze_run(parquet, calibration=False)
    _same(a["conditions"], b["conditions"])
    out = tmp_path / "export"
    assert main(["export", str(jsonl), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cond=control", "cond=intention"]
    lines = (jsonl / "records" / "sim.jsonl").read_text().splitlines()
    assert export_parquet(jsonl, out) == len(lines)  # every record of the run's trials
    # The export read back (as Spark or Trino would) gives the same analysis.
    for f in (jsonl / "records").iterdir():
        f.unlink()
    shutil.copytree(out, jsonl / "records" / "export")
    c = analyze_run(jsonl, calibration=False)
    _same(c["conditions"], a["conditions"])


def _flat(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}.{key}").items()}
    if isinstance(data, list):
        return {k: v for i, val in enumerate(data) for k, v in _flat(val, f"{prefix}[{i}]").items()}
    return {prefix: data}


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    """Equal up to the rounding of sums taken in another order."""
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for key, va in fa.items():
        vb = fb[key]
        if isinstance(va, float) and isinstance(vb, float):
            assert va == pytest.approx(vb, rel=1e-9, abs=1e-12, nan_ok=True), key
        else:
            assert va == vb, key


def _rejects(run: Path) -> bool:
    return bool(analyze_run(run, calibration=False)["primary"]["reject_null"])


@pytest.mark.slow
def test_type_i_error_under_the_null_is_within_its_binomial_interval(tmp_path: Path) -> None:
    path = study_file(tmp_path, {"trials_per_condition = 10": "trials_per_condition = 4",
                                 "planned_tokens = 160": ""})  # fmt: skip
    studies = 400
    k = sum(_rejects(simulate_run(path, tmp_path / f"r{i}", seed=1000 + i)) for i in range(studies))
    low, high = (stats.binom.ppf(0.005, studies, 0.05), stats.binom.ppf(0.995, studies, 0.05))
    assert low <= k <= high, (k, low, high)


@pytest.mark.slow
def test_a_mean_shift_of_expected_stouffer_z_4_is_detected(tmp_path: Path) -> None:
    path = study_file(tmp_path, {"trials_per_condition = 10": "trials_per_condition = 4",
                                 "planned_tokens = 160": ""})  # fmt: skip
    # 4 trials x 16 tokens of 64 bytes: Stouffer Z = sqrt(64) * shift * sqrt(64) / 73.9003.
    tokens, sample_count = 4 * 16, 64
    shift = 4.0 * 73.9003 / (math.sqrt(tokens) * math.sqrt(sample_count))
    hits = sum(
        _rejects(
            simulate_run(path, tmp_path / f"r{i}", seed=5000 + i, mean_shift={"intention": shift})
        )
        for i in range(100)
    )
    assert hits >= 95


def test_the_built_in_calibration_reports_the_type_i_error(tmp_path: Path) -> None:
    path = study_file(tmp_path)
    result = analyze_run(simulate_run(path, tmp_path / "run", seed=8))
    cal = result["calibration"]
    assert cal["studies"] == 400
    assert cal["interval_99"] == list(binomial_interval(cal["rejections"], 400))
    assert cal["calibrated"]
    assert cal["type_i_error"] == cal["rejections"] / 400
