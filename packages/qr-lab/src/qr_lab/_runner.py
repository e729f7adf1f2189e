"""``qr-lab run``: send a registered study's trials, resumably, and gather their records."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qr_lab._embedded import embedded_engine
from qr_lab._errors import RunError
from qr_lab._http import HTTPRefusedError, complete, first_model
from qr_lab._plan import (
    RECORDS_DIR,
    Trial,
    TrialsLog,
    make_plan,
    plan_trials,
    read_manifest,
    write_manifest,
)
from qr_lab._register import check_registered
from qr_lab._study import Study, load_study

__all__ = ["RunOptions", "RunSummary", "run_study"]

_RETRIES = 3


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How ``qr-lab run`` runs (see ``qr-lab run --help``)."""

    run_dir: Path
    embedded: bool = False
    endpoint: str | None = None
    model: str | None = None
    concurrency: int | None = None
    engine_records: Path | None = None
    progress: bool = True
    max_trials: int | None = None


@dataclass
class RunSummary:
    """What one invocation did."""

    run_dir: Path
    planned: int
    done_before: int
    done_now: int = 0
    failed: int = 0
    pending: list[str] = field(default_factory=list)


def _open_run(study_path: Path, study: Study, registration: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECORDS_DIR).mkdir(exist_ok=True)
    if (run_dir / "manifest.json").exists():
        manifest = read_manifest(run_dir)
        if manifest["registration"]["hash"] != registration["hash"]:
            raise RunError(
                f"{run_dir} belongs to registration {manifest['registration']['hash'][:16]}, "
                f"not to the study's current one ({registration['hash'][:16]}): "
                "use another run directory"
            )
        return
    trials, key = make_plan(study)
    write_manifest(
        run_dir,
        {
            "study_path": str(study_path.resolve()),
            "registration": {k: registration[k] for k in ("hash", "registered_at", "versions")},
            "study": study.normalized(),
            "blinding": key,
            "trials": [asdict(t) for t in trials],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


@contextlib.contextmanager
def _engine(study: Study, options: RunOptions, run_dir: Path) -> Iterator[tuple[str, str | None]]:
    if not options.embedded:
        yield options.endpoint or study.engine.endpoint, None
        return
    records = run_dir / RECORDS_DIR
    number = 1 + sum(1 for _ in records.glob("engine-*.jsonl"))
    path = records / f"engine-{number:03d}.jsonl"
    with embedded_engine(path, study.engine.embedded_env, run_dir / "engine.log") as endpoint:
        yield endpoint, str(path.relative_to(run_dir))


def run_study(study_path: Path, options: RunOptions, console: Console | None = None) -> RunSummary:
    """Run (or resume) the study's trials into ``options.run_dir``.

    Raises:
        RegistrationError: The study is not registered or changed since.
        RunError: The run directory belongs to another registration, or the engine failed.
    """
    console = console or Console(stderr=True)
    study = load_study(study_path)
    registration = check_registered(study_path, study)
    run_dir = options.run_dir
    _open_run(study_path, study, registration, run_dir)
    manifest = read_manifest(run_dir)
    log = TrialsLog(run_dir)
    log.repair()
    done = log.read()
    trials = plan_trials(manifest)
    pending = [t for t in trials if t.trial_id not in done]
    if options.max_trials is not None:
        pending = pending[: options.max_trials]
    summary = RunSummary(run_dir, len(trials), len(done))
    if pending:
        with _engine(study, options, run_dir) as (endpoint, records_file):
            model = options.model or study.engine.model or first_model(endpoint)
            _send(
                study=study,
                options=options,
                console=console,
                log=log,
                pending=pending,
                endpoint=endpoint,
                model=model,
                records_file=records_file,
                summary=summary,
            )
            if records_file is not None:
                _await_records(run_dir, records_file, log)
    if options.engine_records is not None:
        collect_records(run_dir, options.engine_records)
    return summary


def _send(
    *,
    study: Study,
    options: RunOptions,
    console: Console,
    log: TrialsLog,
    pending: list[Trial],
    endpoint: str,
    model: str,
    records_file: str | None,
    summary: RunSummary,
) -> None:
    prompts = study.prompts.all()
    args = {c.name: c.request_args() for c in study.conditions}
    limit = options.concurrency or study.engine.concurrency

    def one(trial: Trial) -> None:
        xargs = {**args[trial.condition], "qr_session": trial.trial_id, "qr_label": trial.code}
        started = time.time()
        for attempt in range(_RETRIES + 1):
            try:
                out = complete(
                    endpoint,
                    model=model,
                    prompt=prompts[trial.prompt_index],
                    max_tokens=study.design.tokens_per_trial,
                    xargs=xargs,
                    timeout_s=study.engine.timeout_s,
                )
            except HTTPRefusedError as exc:
                log.append(trial, status="failed", error=str(exc), records_file=records_file,
                           started_at=started, completion_tokens=0)  # fmt: skip
                summary.failed += 1
                return
            except OSError:
                if attempt == _RETRIES:
                    raise
                time.sleep(2.0 * (attempt + 1))
                continue
            choice = out["choices"][0]
            log.append(
                trial,
                status="ok",
                error="",
                records_file=records_file,
                started_at=started,
                completion_tokens=int(out.get("usage", {}).get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason"),
                text=choice.get("text", ""),
            )
            summary.done_now += 1
            return

    columns = (TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        Progress(*columns, console=console, disable=not options.progress) as bar,
        ThreadPoolExecutor(limit) as pool,
    ):
        task = bar.add_task("trials", total=summary.planned, completed=summary.done_before)
        queue = list(pending)
        running: set[Future[None]] = set()
        errors: list[BaseException] = []
        while queue or running:
            while queue and len(running) < limit and not errors:
                running.add(pool.submit(one, queue.pop(0)))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                if (exc := fut.exception()) is not None:
                    errors.append(exc)
                bar.advance(task)
            if errors and not running:
                break
        summary.pending = [t.trial_id for t in queue]
    if errors:
        raise RunError(
            f"the engine at {endpoint} failed: {errors[0]}; the finished trials are kept, "
            "run the same command again to resume"
        )


def _await_records(
    run_dir: Path, records_file: str, log: TrialsLog, timeout_s: float = 60.0
) -> None:
    """Wait until the engine's records of the trials it finished are on disk.

    The engine writes records from a background thread, a moment after the
    response; stopping it first could lose the last trial's records.
    """
    expected: dict[str, int] = {
        e["trial_id"]: int(e.get("completion_tokens", 0))
        for e in log.read().values()
        if e.get("records_file") == records_file and e.get("status") == "ok"
    }
    path = run_dir / records_file
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen: dict[str, int] = {}
        with contextlib.suppress(OSError), open(path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    session = json.loads(line).get("session")
                    seen[session] = seen.get(session, 0) + 1
        if all(seen.get(t, 0) >= n for t, n in expected.items()):
            return
        time.sleep(0.2)


def collect_records(run_dir: Path, engine_records: Path) -> int:
    """Copy the records of this run's trials from an engine's records file into the run.

    Rewrites ``records/collected.jsonl`` from scratch, so collecting twice is harmless.
    Returns the number of records copied.
    """
    sessions = {t["trial_id"] for t in read_manifest(run_dir)["trials"]}
    target = run_dir / RECORDS_DIR / "collected.jsonl"
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with open(engine_records, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            if not line.endswith(b"\n"):
                break  # a line the engine is still writing
            with contextlib.suppress(ValueError):
                if json.loads(line).get("session") in sessions:
                    dst.write(line)
                    count += 1
    tmp.replace(target)
    return count
