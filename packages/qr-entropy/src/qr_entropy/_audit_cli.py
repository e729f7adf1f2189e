"""``qr-entropy audit verify``: check records against audit logs, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qr_entropy._audit_verify import FINDING_KINDS, verify_audit

__all__ = ["audit_app"]

audit_app = typer.Typer(
    name="audit",
    help="Check per-token records against an entropy server's audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_out = Console()
_err = Console(stderr=True)


@audit_app.command("verify")
def verify(
    *,
    records: Annotated[
        list[Path],
        typer.Option(
            "--records", exists=True, dir_okay=False, help="Records file (JSON Lines); repeatable."
        ),
    ],
    log: Annotated[
        list[Path],
        typer.Option("--log", exists=True, dir_okay=False, help="Server audit log; repeatable."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    clock_skew_ms: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Tolerance when the records' and the server's clocks differ "
            "(0: one machine, one clock).",
        ),
    ] = 0.0,
    all_served: Annotated[
        bool,
        typer.Option(
            "--all-served",
            help="Also flag served rows no record claims (the records are all the server served).",
        ),
    ] = False,
    head: Annotated[
        list[str] | None,
        typer.Option("--head", help="A head hash published earlier that must still be in the log."),
    ] = None,
) -> None:
    """Report every token not covered by the logs and every break in their hash chains.

    Exits 0 when nothing is found, 1 on any finding.
    """
    try:
        report = verify_audit(
            records,
            log,
            clock_skew_ns=round(clock_skew_ms * 1e6),
            all_served=all_served,
            expected_heads=head or (),
        )
    except OSError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        if report.findings:
            table = Table(title=f"{len(report.findings)} finding(s)")
            for column in ("kind", "where", "detail"):
                table.add_column(column, overflow="fold")
            for finding in report.findings:
                table.add_row(finding.kind, finding.where, finding.detail)
            _out.print(table)
            kinds = sorted({f.kind for f in report.findings})
            for kind in kinds:
                _out.print(f"  {kind}: {FINDING_KINDS[kind]}", highlight=False)
        for note in report.notes:
            _out.print(f"note: {note}", highlight=False, soft_wrap=True)
        for h in report.heads:
            _out.print(
                f"log {h.path}: {h.lines} lines, head index {h.index} hash {h.hash}",
                highlight=False,
                soft_wrap=True,
            )
        verdict = "OK" if report.ok else "FAILED"
        _out.print(
            f"{verdict}: {report.tokens_verified} of {report.records} records verified against "
            f"{report.log_rows} served rows in {report.log_lines} log lines",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(1)
