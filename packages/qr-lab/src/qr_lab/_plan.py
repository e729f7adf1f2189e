"""The run directory: the blinded, randomised trial plan, the manifest and the trials log."""

from __future__ import annotations

import json
import os
import string
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qr_lab._errors import RunError
from qr_lab._study import Study

__all__ = ["Trial", "TrialsLog", "make_plan", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"
TRIALS_LOG = "trials.jsonl"
RECORDS_DIR = "records"


@dataclass(frozen=True, slots=True)
class Trial:
    """One planned trial: its id (the request's ``qr_session``), condition and label code."""

    trial_id: str
    order: int
    condition: str
    code: str
    prompt_index: int


def _codes(n: int) -> list[str]:
    letters = string.ascii_uppercase
    return [letters[i] if n <= 26 else f"C{i + 1:03d}" for i in range(n)]


def make_plan(study: Study) -> tuple[list[Trial], dict[str, str]]:
    """The trials in their randomised order and the blinding key (code -> condition).

    The order and the codes come from ``design.seed`` alone, so a study always
    has the same plan. Each condition gets the prompts in turn, so conditions
    are balanced over prompts. Without blinding a condition's code is its name.
    """
    rng = np.random.default_rng(study.design.seed)
    names = [c.name for c in study.conditions]
    if study.design.blind:
        shuffled = [names[i] for i in rng.permutation(len(names))]
        key = dict(zip(_codes(len(names)), shuffled, strict=True))
    else:
        key = {n: n for n in names}
    code_of = {cond: code for code, cond in key.items()}
    prompts = len(study.prompts.all())
    cells = [
        (name, j % prompts) for name in names for j in range(study.design.trials_per_condition)
    ]
    order = rng.permutation(len(cells))
    width = max(4, len(str(len(cells))))
    trials = [
        Trial(f"T{i + 1:0{width}d}", i, cells[k][0], code_of[cells[k][0]], cells[k][1])
        for i, k in enumerate(order.tolist())
    ]
    return trials, key


def write_manifest(run_dir: Path, data: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / MANIFEST)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest.

    Raises:
        RunError: ``run_dir`` is not a run directory.
    """
    path = Path(run_dir) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    return data


def plan_trials(manifest: dict[str, Any]) -> list[Trial]:
    """The manifest's trials."""
    return [Trial(**t) for t in manifest["trials"]]


class TrialsLog:
    """``trials.jsonl``: one line per finished trial, appended and synced before it counts.

    A line cut short by a crash (no newline at its end) is ignored and removed
    when the log is opened again, so its trial is run again.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TRIALS_LOG
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict[str, Any]]:
        """Finished trials by id (the last line of a trial wins)."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        done: dict[str, dict[str, Any]] = {}
        for line in raw.split(b"\n")[:-1] if raw else []:
            if line.strip():
                entry = json.loads(line)
                done[entry["trial_id"]] = entry
        return done

    def repair(self) -> None:
        """Drop a last line left incomplete by a crash."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            keep = raw[: raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))

    def append(self, trial: Trial, **fields: Any) -> None:
        """Record a finished trial (durably: the line is on disk when this returns)."""
        entry = {**asdict(trial), **fields, "logged_at": time.time()}
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock, open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
