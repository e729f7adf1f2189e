"""The ``qr-lab`` command: register, run, analyze, export and report a study."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from qr_lab._errors import QRLabError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qr-lab", description="Pre-registered qr-sampler studies: register, run, analyze."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a study file")
    p.add_argument("study", type=Path)

    p = sub.add_parser("register", help="freeze a study: content hash, time, package versions")
    p.add_argument("study", type=Path)
    p.add_argument("--new", action="store_true", help="register a changed study anew")

    p = sub.add_parser("run", help="send the trials of a registered study (resumable)")
    p.add_argument("study", type=Path)
    p.add_argument("--run-dir", type=Path, help="run directory (default: runs/<study name>)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="start a local vLLM engine on qr-vllm's tiny model (needs qr-vllm and vLLM)",
    )
    p.add_argument("--endpoint", help="override [engine] endpoint")
    p.add_argument("--model", help="override [engine] model")
    p.add_argument("--concurrency", type=int, help="override [engine] concurrency")
    p.add_argument(
        "--engine-records",
        type=Path,
        help="the engine's records file (QR_RECORDS_PATH), to copy this run's records from",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-trials", type=int, help=argparse.SUPPRESS)

    p = sub.add_parser("analyze", help="the pre-registered analysis of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-calibration", action="store_true")

    p = sub.add_parser("export", help="a run's records as partitioned Parquet")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)

    p = sub.add_parser("report", help="one self-contained HTML report of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, help="default: RUN/report.html")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1: an error, printed; 2: bad usage)."""
    args = _parser().parse_args(argv)
    # Messages are not wrapped: they hold paths and field names that must stay whole.
    console = Console(stderr=True, soft_wrap=True)
    try:
        return _dispatch(args, console)
    except QRLabError as exc:
        console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        return 1


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    from qr_lab._study import load_study  # noqa: PLC0415 -- keeps `qr-lab --help` instant

    if args.command == "check":
        study = load_study(args.study)
        console.print(f"{args.study}: valid ({len(study.conditions)} conditions)")
        return 0
    if args.command == "register":
        from qr_lab._register import register  # noqa: PLC0415

        entry = register(args.study, load_study(args.study), new=args.new)
        print(json.dumps({k: entry[k] for k in ("hash", "registered_at", "versions")}, indent=2))
        return 0
    if args.command == "run":
        from qr_lab._runner import RunOptions, run_study  # noqa: PLC0415

        study = load_study(args.study)
        run_dir = args.run_dir or Path("runs") / study.study.name
        summary = run_study(
            args.study,
            RunOptions(
                run_dir=run_dir,
                embedded=args.embedded,
                endpoint=args.endpoint,
                model=args.model,
                concurrency=args.concurrency,
                engine_records=args.engine_records,
                progress=not args.no_progress,
                max_trials=args.max_trials,
            ),
            console,
        )
        console.print(
            f"{summary.done_before + summary.done_now}/{summary.planned} trials finished "
            f"({summary.done_now} now, {summary.failed} refused) in {run_dir}"
        )
        return 0
    if args.command == "analyze":
        from qr_lab._analyze import analyze_run  # noqa: PLC0415
        from qr_lab._table import print_analysis  # noqa: PLC0415

        result = analyze_run(args.run_dir, calibration=not args.no_calibration)
        (args.run_dir / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            # Wide enough for the tables when the output is a file or a pipe.
            width = shutil.get_terminal_size((150, 24)).columns
            print_analysis(result, Console(width=width if sys.stdout.isatty() else 150))
        return 0
    if args.command == "export":
        from qr_lab._export import export_parquet  # noqa: PLC0415

        rows = export_parquet(args.run_dir, args.out_dir)
        console.print(f"{rows} records written to {args.out_dir} (partitioned by condition)")
        return 0
    from qr_lab._report import write_report  # noqa: PLC0415

    out = args.output or args.run_dir / "report.html"
    write_report(args.run_dir, out)
    console.print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
