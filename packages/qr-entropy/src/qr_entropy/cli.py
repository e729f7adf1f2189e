"""The ``qr-entropy`` command: list, sample, check and benchmark entropy sources."""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from qr_entropy._audit_cli import audit_app
from qr_entropy._base import EntropySource, Provenance
from qr_entropy._battery import run_battery
from qr_entropy._errors import QREntropyError
from qr_entropy._health import HealthTestCutoffs
from qr_entropy._registry import EntropySourceRegistry
from qr_entropy._settings import EntropySettings

__all__ = ["app", "main"]

app = typer.Typer(
    name="qr-entropy",
    help=(
        "Random bytes from any installed entropy source, with provenance: list the "
        "sources, sample bytes, run a statistical battery, benchmark. Settings come "
        "from QR_* environment variables (for example QR_MOCK_SEED)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(audit_app)

_SIZE = re.compile(r"^\s*(-?\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Below this many bytes a progress bar would only flicker.
_PROGRESS_MIN_BYTES = 4 << 20

_out = Console()
_err = Console(stderr=True)


def _parse_size(value: str) -> int:
    match = _SIZE.match(str(value))
    if match is None:
        raise typer.BadParameter(
            f"{value!r} is not a byte count; use an integer with an optional K, M or G "
            f"suffix (powers of 1024), e.g. 20480 or 1M"
        )
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _settings() -> EntropySettings:
    try:
        return EntropySettings()
    except ValidationError as exc:
        raise _fail(f"bad QR_* setting: {exc}") from exc


def _build(name: str | None, settings: EntropySettings) -> EntropySource:
    try:
        return EntropySourceRegistry.build(name or settings.entropy_source_type, settings)
    except QREntropyError as exc:
        raise _fail(str(exc)) from exc


def _describe(provenance: Provenance) -> str:
    parts = [
        f"source={provenance.source}",
        f"fallback={provenance.is_fallback}",
        f"health={provenance.health.value}",
        f"generated_at_ns={provenance.generated_at_ns}",
        f"latency_ms={provenance.fetch_latency_ns / 1e6:.3f}",
    ]
    if provenance.device_id:
        parts.append(f"device_id={provenance.device_id}")
    return " ".join(parts)


SourceOption = Annotated[
    str | None,
    typer.Option(
        "--source",
        "-s",
        help="Source name (see `qr-entropy list`); default QR_ENTROPY_SOURCE_TYPE or 'system'.",
    ),
]


@app.command("list")
def list_sources() -> None:
    """List the installed entropy sources and whether each can deliver now."""
    settings = _settings()
    table = Table(title="qr_entropy.sources")
    for column in ("name", "distribution", "available", "health-tested", "note"):
        table.add_column(column)
    for name, distribution in EntropySourceRegistry.available().items():
        available, tested, note = "no", "-", ""
        try:
            source = EntropySourceRegistry.build(name, settings)
        except Exception as exc:  # one broken plugin must not hide the others
            note = f"{type(exc).__name__}: {exc}"
        else:
            with source:
                available = "yes" if source.is_available else "no"
                tested = "yes" if source.health_tested else "no"
        table.add_row(name, distribution, available, tested, note)
    _out.print(table)


@app.command()
def sample(
    n_bytes: Annotated[
        int,
        typer.Option(
            "--bytes", "-n", parser=_parse_size, metavar="N", help="Bytes to draw (e.g. 64, 1M)."
        ),
    ],
    source_name: SourceOption = None,
    hex_output: Annotated[
        bool, typer.Option("--hex", help="Write hexadecimal text instead of raw bytes.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="Write to FILE instead of stdout."),
    ] = None,
) -> None:
    """Draw N raw bytes from a source; the provenance goes to stderr."""
    settings = _settings()
    source = _build(source_name, settings)
    with source:
        try:
            result = source.fetch(n_bytes)
        except QREntropyError as exc:
            raise _fail(str(exc)) from exc
    payload = (result.data.hex() + "\n").encode("ascii") if hex_output else result.data
    if out is not None:
        out.write_bytes(payload)
    else:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    _err.print(
        f"# {len(result.data)} bytes {_describe(result.provenance)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def check(
    n_bytes: Annotated[
        int,
        typer.Option("--bytes", "-n", parser=_parse_size, metavar="N", help="Bytes to test."),
    ] = 1 << 20,
    source_name: SourceOption = None,
    sample_count: Annotated[
        int,
        typer.Option(min=1, help="Bytes per value of u in the KS test (the sampler uses 20480)."),
    ] = 1024,
    alpha: Annotated[
        float, typer.Option(min=1e-12, max=0.5, help="Significance level of each test.")
    ] = 0.001,
    chunk: Annotated[
        int, typer.Option(parser=_parse_size, metavar="N", help="Bytes per fetch.")
    ] = 1 << 16,
) -> None:
    """Run the statistical battery on N bytes; exit 1 if any test fails.

    Byte-frequency chi-square, KS of u from the z-score amplifier, bit runs,
    lag-1 serial correlation, both SP 800-90B health tests (cutoffs from
    QR_HEALTH_FALSE_ALARM_RATE and QR_HEALTH_MIN_ENTROPY_PER_BYTE) and throughput.
    """
    settings = _settings()
    source = _build(source_name, settings)
    cutoffs = HealthTestCutoffs.derive(
        settings.health_false_alarm_rate, settings.health_min_entropy_per_byte
    )
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=True,
        disable=n_bytes < _PROGRESS_MIN_BYTES,
    )
    with source, progress:
        task = progress.add_task(f"fetching from {source.name}", total=n_bytes)
        try:
            report = run_battery(
                source,
                n_bytes,
                sample_count=sample_count,
                alpha=alpha,
                chunk_bytes=chunk,
                cutoffs=cutoffs,
                progress=lambda size: progress.advance(task, size),
            )
        except QREntropyError as exc:
            raise _fail(f"{source.name}: {exc}", code=1) from exc
    table = Table(title=f"qr-entropy check: {report.n_bytes} bytes from {report.source}")
    for column in ("test", "statistic", "p-value", "result", "what"):
        table.add_column(column)
    for result in report.results:
        verdict = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "-"}[result.passed]
        p_text = "-" if result.p_value is None else f"{result.p_value:.4g}"
        table.add_row(result.name, result.statistic, p_text, verdict, result.detail)
    _out.print(table)
    verdict_text = "PASS" if report.passed else "FAIL"
    _out.print(
        f"significance α = {report.alpha:g} per test; overall: {verdict_text}", highlight=False
    )
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def bench(
    source_names: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="Source to measure; repeat it; default all."),
    ] = None,
    call_bytes: Annotated[
        int,
        typer.Option(parser=_parse_size, metavar="N", help="Bytes per timed call."),
    ] = 20480,
    calls: Annotated[int, typer.Option(min=1, help="Timed calls per source.")] = 50,
) -> None:
    """Throughput and per-call latency of each source, side by side with os.urandom."""
    settings = _settings()
    names = source_names or list(EntropySourceRegistry.available())
    table = Table(title=f"qr-entropy bench: {calls} calls of {call_bytes} bytes per source")
    for column in ("source", "MB/s", "median µs", "p99 µs", "time vs os.urandom", "note"):
        table.add_column(column)
    baseline_ns = _time_calls(lambda: os.urandom(call_bytes), calls)
    baseline_median = statistics.median(baseline_ns)
    table.add_row("os.urandom (baseline)", *_timing_cells(baseline_ns, call_bytes, 1.0), "")
    for name in names:
        try:
            source = EntropySourceRegistry.build(name, settings)
        except Exception as exc:  # report the broken source and go on
            table.add_row(name, "-", "-", "-", "-", f"{type(exc).__name__}: {exc}")
            continue
        with source:
            if not source.is_available:
                table.add_row(name, "-", "-", "-", "-", "not available")
                continue
            try:
                times = _time_calls(lambda: source.fetch(call_bytes), calls)  # noqa: B023 -- called at once
            except QREntropyError as exc:
                table.add_row(name, "-", "-", "-", "-", f"{type(exc).__name__}: {exc}")
                continue
        ratio = statistics.median(times) / max(baseline_median, 1)
        table.add_row(name, *_timing_cells(times, call_bytes, ratio), "")
    _out.print(table)


def _time_calls(call: Callable[[], object], calls: int) -> list[int]:
    call()  # warm-up: first-call costs (imports, channel set-up) are not per-call latency
    times: list[int] = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    return times


def _timing_cells(times: list[int], call_bytes: int, ratio: float) -> tuple[str, str, str, str]:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    throughput = call_bytes * len(times) / max(sum(times), 1) * 1e3
    return f"{throughput:.2f}", f"{median / 1e3:.1f}", f"{p99 / 1e3:.1f}", f"{ratio:.2f}x"


def main() -> None:
    """Entry point of the ``qr-entropy`` console script."""
    app()
