"""Run directories made without an engine: records from the real amplifier math on mock bytes.

The statistics tests need hundreds of studies with a known truth, which real
engines cannot give in test time. Each simulated token is what qr-vllm records
for it: the bytes of qr_entropy's ``mock_uniform`` source (seeded, with an
optional mean shift), amplified by qr_core's ``zscore_mean``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from qr_core import ZScoreMeanAmplifier
from qr_entropy.sources import MockUniformSource
from qr_lab._plan import RECORDS_DIR, TRIALS_LOG, plan_trials, read_manifest
from qr_lab._register import register
from qr_lab._runner import _open_run
from qr_lab._study import Study, load_study

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "studies"


def study_file(tmp: Path, replace: dict[str, str] | None = None) -> Path:
    """A copy of the example study in ``tmp``, with text replacements."""
    shutil.copy(EXAMPLE / "prompts.txt", tmp / "prompts.txt")
    text = (EXAMPLE / "intention.toml").read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "study.toml"
    path.write_text(text)
    return path


_REGISTERED: dict[tuple[Path, float], tuple[Study, dict[str, Any]]] = {}


def _registered(study_path: Path) -> tuple[Study, dict[str, Any]]:
    """The study and its registration, made once per version of the file."""
    key = (study_path.resolve(), study_path.stat().st_mtime)
    if key not in _REGISTERED:
        study = load_study(study_path)
        _REGISTERED[key] = (study, register(study_path, study))
    return _REGISTERED[key]


def simulate_run(
    study_path: Path,
    run_dir: Path,
    *,
    seed: int,
    mean_shift: dict[str, float] | None = None,
    sample_count: int = 64,
    fallback_every: int = 0,
    superseded_every: int = 0,
    failed_trials: int = 0,
    fmt: str = "jsonl",
) -> Path:
    """Register the study, plan it, and write records and a trials log as an engine would."""
    study, registration = _registered(study_path)
    _open_run(study_path, study, registration, run_dir)
    trials = plan_trials(read_manifest(run_dir))
    log_lines: list[str] = []
    amp = ZScoreMeanAmplifier()
    tokens = study.design.tokens_per_trial
    rows: list[dict[str, Any]] = []
    shift = mean_shift or {}
    rng = np.random.default_rng(seed)
    for serial, trial in enumerate(trials, start=1):
        source = MockUniformSource(seed=seed * 100_003 + serial,
                                   mean_shift=shift.get(trial.condition, 0.0))  # fmt: skip
        block = np.frombuffer(source.get_random_bytes(tokens * sample_count), dtype=np.uint8)
        res = amp.amplify_batch(block.reshape(tokens, sample_count))
        failed = trial.order < failed_trials
        for seq in range(tokens):
            row = _record(trial.trial_id, trial.code, serial, seq, u=res.u[seq], z=res.z_score[seq])
            row["token_prob"] = float(rng.uniform(0.05, 1.0))
            row["shannon_entropy"] = float(rng.uniform(0.0, 3.0))
            if fallback_every and (serial * tokens + seq) % fallback_every == 0:
                row["is_fallback"] = True
                row["entropy_source"] = "system"
            if failed:
                row.update(status="failed", u=None, z_score=None, error="entropy unavailable")
            if superseded_every and (serial * tokens + seq) % superseded_every == 0:
                early = dict(row, timestamp_ns=row["timestamp_ns"] - 1, u=0.999, z_score=9.0)
                rows.append(early)
            rows.append(row)
        entry = {**asdict(trial), "status": "ok", "error": "", "records_file": None,
                 "completion_tokens": tokens}  # fmt: skip
        log_lines.append(json.dumps(entry) + "\n")
    # The trials log as `qr-lab run` writes it (without its per-line fsync: hundreds of
    # simulated studies are written here).
    (run_dir / TRIALS_LOG).write_text("".join(log_lines))
    out = run_dir / RECORDS_DIR
    if fmt == "jsonl":
        with open(out / "sim.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        import duckdb

        con = duckdb.connect()
        tmp = out / "sim.tmp.jsonl"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        con.execute(
            f"COPY (SELECT * FROM read_json('{tmp}', format='newline_delimited')) "
            f"TO '{out / 'sim.parquet'}' (FORMAT PARQUET)"
        )
        tmp.unlink()
    return run_dir


def _record(
    session: str, label: str, serial: int, seq: int, *, u: float, z: float
) -> dict[str, Any]:
    return {
        "request_serial": serial,
        "sequence_number": seq,
        "slot": 0,
        "session": session,
        "label": label,
        "status": "ok",
        "token_id": 5,
        "token_rank": 0,
        "token_prob": 0.5,
        "num_candidates": 10,
        "u": float(u),
        "z_score": float(z),
        "sample_mean": 127.5,
        "sample_count": 64,
        "temperature": 0.7,
        "shannon_entropy": 1.0,
        "top_k": 50,
        "top_p": 0.9,
        "min_p": 0.0,
        "temperature_strategy": "fixed",
        "signal_amplifier": "zscore_mean",
        "entropy_source": "mock_uniform",
        "is_fallback": False,
        "fallback_reason": "",
        "health": "ok",
        "device_id": "",
        "entropy_fetch_ms": 0.5 + (serial % 7) * 0.1,
        "entropy_generated_at_ns": 1_700_000_000_000_000_000 + serial * 10**9 + seq * 10**6,
        "timestamp_ns": 1_700_000_000_000_000_000 + serial * 10**9 + seq * 10**6 + 1000,
        "config_hash": "abc",
        "runner": "v1",
        "error": "",
        "records_schema": 2,
        "engine_id": "sim-engine",
    }
