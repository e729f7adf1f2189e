"""``qr-lab analyze``: exclusions, statistics per condition, test minus control, primary test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from qr_lab._calibrate import calibrate
from qr_lab._data import RunTable, insert_rows, load_tokens
from qr_lab._plan import RECORDS_DIR, TrialsLog, read_manifest
from qr_lab._stats import (
    alternative_for,
    chi2_segments,
    ks_uniform,
    mean_ci,
    permutation_difference,
    stouffer,
)

__all__ = ["analyze_loaded", "analyze_run", "analyze_table", "finished_trials"]

_FLAG = {
    "superseded_prefill": "superseded",
    "failed": "failed",
    "fallback": "fallback",
    "unhealthy": "unhealthy",
}


def finished_trials(run_dir: Path) -> list[dict[str, Any]]:
    """The run's finished trials (plan fields and the trials-log entry), in plan order."""
    log = TrialsLog(run_dir).read()
    plan = read_manifest(run_dir)["trials"]
    return [{**t, **log[t["trial_id"]]} for t in plan if t["trial_id"] in log]


def analyze_run(run_dir: str | Path, *, calibration: bool = True) -> dict[str, Any]:
    """Analyze a run directory as its registered study declares; returns the result as JSON data."""
    return analyze_loaded(Path(run_dir), calibration=calibration)[0]


def analyze_loaded(run_dir: Path, *, calibration: bool = True) -> tuple[dict[str, Any], RunTable]:
    """`analyze_run`, and the loaded table (with its ``used`` view) for the report's plots."""
    manifest = read_manifest(run_dir)
    trials = finished_trials(run_dir)
    names = [c["name"] for c in manifest["study"]["conditions"]]
    table = load_tokens([run_dir / RECORDS_DIR], trials, run_dir, names)
    result = analyze_table(table, manifest["study"], trials, calibration=calibration)
    result["run"] = {
        "directory": str(run_dir.resolve()),
        "registration": manifest["registration"],
        "planned_trials": len(manifest["trials"]),
        "finished_trials": len(trials),
        "failed_requests": sum(1 for t in trials if t.get("status") != "ok"),
        "blinding": manifest["blinding"],
    }
    return result, table


def _usable(exclude: list[str]) -> str:
    flags = ["other_attempt", *(_FLAG[e] for e in exclude)]
    return "NOT (" + " OR ".join(flags) + ") AND valid"


def _exclusion_counts(table: RunTable, exclude: list[str], conditions: list[str]) -> dict[str, Any]:
    steps = [("records", "true"), ("other_attempts", "NOT other_attempt")]
    done = ["other_attempt"]
    for name in exclude:
        done.append(_FLAG[name])
        steps.append((name, "NOT (" + " OR ".join(done) + ")"))
    steps.append(("missing_values", _usable(exclude)))
    selects = ", ".join(f"coalesce(sum(n) FILTER (WHERE {cond}), 0)" for _, cond in steps)
    rows = {r[0]: r[1:] for r in table.sql(f"SELECT cond, {selects} FROM grpf GROUP BY cond")}
    out: dict[str, Any] = {}
    for c in conditions:
        counts = rows.get(c, (0,) * len(steps))
        out[c] = [
            {"step": name, "remaining": int(n), "excluded": int(prev - n) if i else 0}
            for i, ((name, _), n, prev) in enumerate(
                zip(steps, counts, (counts[0], *counts[:-1]), strict=True)
            )
        ]
    return out


def _trials(
    table: RunTable, usable: str, planned: int | None
) -> tuple[list[tuple[str, str, int, int, float, float]], dict[str, int | None], dict[str, int]]:
    """Per trial its usable tokens within the plan: (cond, session, order, n, Σz, Σz²).

    Also per trial the last admitted sequence number (None: all, -1: none) and
    per condition the tokens beyond the plan. Trials count in their planned order.
    """
    rows = table.sql(
        f"SELECT cond, session, ord, sum(n), sum(sz), sum(szz) FROM grpf WHERE {usable} "
        "GROUP BY ALL ORDER BY ord"
    )
    kept: list[tuple[str, str, int, int, float, float]] = []
    limit: dict[str, int | None] = {}
    beyond: dict[str, int] = {}
    left: dict[str, float] = {}
    for cond, session, order, n, sz, szz in rows:
        room = left.setdefault(cond, planned if planned is not None else math.inf)
        beyond.setdefault(cond, 0)
        if room >= n:
            kept.append((cond, session, int(order), int(n), float(sz), float(szz)))
            limit[session] = None
            left[cond] = room - n
        elif room > 0:
            take = int(room)
            first = table.sql(
                f"SELECT sequence_number, z_score FROM tok WHERE {usable} AND session = ? "
                "ORDER BY sequence_number LIMIT ?",
                [session, take],
            )
            z = [float(r[1]) for r in first]
            kept.append((cond, session, int(order), take, sum(z), sum(x * x for x in z)))
            limit[session] = int(first[-1][0])
            beyond[cond] += int(n) - take
            left[cond] = 0
        else:
            limit[session] = -1
            beyond[cond] += int(n)
    return kept, limit, beyond


def analyze_table(
    table: RunTable,
    study: dict[str, Any],
    trials: list[dict[str, Any]],
    *,
    calibration: bool = True,
) -> dict[str, Any]:
    """The analysis of a loaded `RunTable` under a (normalized) study."""
    spec = study["analysis"]
    conditions = [c["name"] for c in study["conditions"]]
    predicted = {c["name"]: c.get("predicted", "none") for c in study["conditions"]}
    usable = _usable(spec["exclude"])
    exclusions = _exclusion_counts(table, spec["exclude"], conditions)
    per_trial, limit, beyond = _trials(table, usable, spec["planned_tokens"])
    table.con.execute("CREATE OR REPLACE TEMP TABLE cut (session VARCHAR, max_seq BIGINT)")
    cut_rows = [(s, m) for s, m in limit.items() if m is not None]
    insert_rows(table.con, "cut", ["VARCHAR", "BIGINT"], cut_rows)
    table.con.execute(
        f"CREATE OR REPLACE TEMP VIEW used AS SELECT tok.* FROM tok "
        f"LEFT JOIN cut c ON tok.session = c.session "
        f"WHERE {usable} AND (c.max_seq IS NULL OR sequence_number <= c.max_seq)"
    )
    for c in conditions:
        n_after = exclusions[c][-1]["remaining"]
        exclusions[c].append(
            {"step": "beyond_plan", "remaining": n_after - beyond.get(c, 0),
             "excluded": beyond.get(c, 0)}
        )  # fmt: skip
    seed = int(study["design"]["seed"])
    result: dict[str, Any] = {"study": study["study"]["name"], "conditions": {}}
    trial_means: dict[str, np.ndarray] = {}
    trial_counts: dict[str, list[int]] = {}
    for c in conditions:
        mine = [r for r in per_trial if r[0] == c]
        u = np.asarray(
            table.con.execute(
                "SELECT u FROM used WHERE cix = ?", [conditions.index(c)]
            ).fetchnumpy()["u"],
            dtype=np.float64,
        )
        n = sum(int(r[3]) for r in mine)
        total = float(sum(r[4] for r in mine))
        total_sq = float(sum(r[5] for r in mine))
        alt = alternative_for(spec["sidedness"], predicted[c])
        big_z, p = stouffer(total, n, alt)
        seg = np.array([r[4] / math.sqrt(r[3]) for r in mine], dtype=np.float64)
        chi2, df, chi2_p = chi2_segments(seg)
        ks_d, ks_p = ks_uniform(u)
        trial_means[c] = np.array([r[4] / r[3] for r in mine], dtype=np.float64)
        trial_counts[c] = [int(r[3]) for r in mine]
        result["conditions"][c] = {
            "predicted": predicted[c],
            "trials": len(mine),
            "tokens": n,
            "planned_tokens": spec["planned_tokens"],
            "exclusions": exclusions[c],
            "mean_z": mean_ci(total, total_sq, n),
            "stouffer": {"z": big_z, "p": p, "alternative": alt},
            "chi2": {"chi2": chi2, "df": df, "p": chi2_p},
            "ks_u": {"d": ks_d, "p": ks_p},
        }
    test, control = spec["condition"], spec.get("control")
    if control is not None:
        alt = alternative_for(spec["sidedness"], predicted[test])
        if len(trial_means[test]) and len(trial_means[control]):
            diff, p, exact = permutation_difference(
                trial_means[test],
                trial_means[control],
                alternative=alt,
                n_resamples=int(spec["permutations"]),
                rng=np.random.default_rng(seed),
            )
        else:
            diff, p, exact = math.nan, math.nan, False
        result["difference"] = {
            "test": test,
            "control": control,
            "statistic": "mean over trials of the trial's mean z, test minus control",
            "difference": diff,
            "p": p,
            "exact": exact,
            "permutations": int(spec["permutations"]),
            "alternative": alt,
        }
    result["primary"] = _primary(result, spec)
    if calibration and spec["calibration_studies"] > 0:
        result["calibration"] = calibrate(spec, predicted, trial_counts, seed)
    return result


def _primary(result: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    name, cond = spec["primary"], spec["condition"]
    stats = result["conditions"][cond]
    if name == "stouffer_z":
        value, p = stats["stouffer"]["z"], stats["stouffer"]["p"]
    elif name == "chi2":
        value, p = stats["chi2"]["chi2"], stats["chi2"]["p"]
    elif name == "ks_u":
        value, p = stats["ks_u"]["d"], stats["ks_u"]["p"]
    else:
        value, p = result["difference"]["difference"], result["difference"]["p"]
    alpha = float(spec["alpha"])
    reject = bool(p < alpha) if not math.isnan(p) else False
    return {
        "statistic": name,
        "condition": cond,
        "control": spec.get("control"),
        "value": value,
        "p": p,
        "alpha": alpha,
        "sidedness": spec["sidedness"],
        "reject_null": reject,
        "verdict": (
            f"null hypothesis rejected at alpha={alpha:g} (p={p:.4g})"
            if reject
            else f"null hypothesis not rejected at alpha={alpha:g} (p={p:.4g})"
        ),
        "note": "pre-registered primary test; every other statistic is exploratory",
    }
