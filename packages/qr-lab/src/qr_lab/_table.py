"""The analysis as rich tables for the terminal."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_analysis"]


def _f(x: Any, spec: str = ".4g") -> str:
    return "-" if x is None or math.isnan(x) else format(x, spec)


def print_analysis(result: dict[str, Any], console: Console) -> None:
    """Print the exclusions, per-condition statistics, the difference and the primary test."""
    primary = result["primary"]
    conds = result["conditions"]
    steps = [s["step"] for s in next(iter(conds.values()))["exclusions"]]
    table = Table(title="tokens remaining after each exclusion", header_style="bold")
    table.add_column("condition")
    for step in steps:
        table.add_column(step, justify="right")
    for name, c in conds.items():
        table.add_row(name, *(str(s["remaining"]) for s in c["exclusions"]))
    console.print(table)

    table = Table(title="per condition (exploratory unless marked primary)", header_style="bold")
    for col in ("condition", "tokens", "mean z [95% CI]", "Stouffer Z", "p", "χ² (df)", "p(χ²)",
                "KS D", "p(KS)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "condition" else "right")
    for name, c in conds.items():
        m = c["mean_z"]
        mark = {name: ""}
        if primary["condition"] == name and primary["statistic"] != "difference":
            mark[name] = f" [bold yellow](primary: {primary['statistic']})[/]"
        table.add_row(
            name + mark[name],
            str(c["tokens"]),
            f"{_f(m['mean'], '+.4f')} [{_f(m['low'], '+.4f')}, {_f(m['high'], '+.4f')}]",
            _f(c["stouffer"]["z"], "+.3f"),
            _f(c["stouffer"]["p"]),
            f"{_f(c['chi2']['chi2'], '.2f')} ({c['chi2']['df']})",
            _f(c["chi2"]["p"]),
            _f(c["ks_u"]["d"]),
            _f(c["ks_u"]["p"]),
        )
    console.print(table)
    if "difference" in result:
        d = result["difference"]
        tag = " [bold yellow](primary)[/]" if primary["statistic"] == "difference" else ""
        console.print(
            f"{d['test']} - {d['control']}{tag}: difference of mean z "
            f"{_f(d['difference'], '+.4f')}, permutation p={_f(d['p'])} "
            f"({'exact' if d['exact'] else str(d['permutations']) + ' permutations'}, "
            f"{d['alternative']})"
        )
    colour = "red" if primary["reject_null"] else "green"
    console.print(
        f"[bold]primary test[/] ({primary['statistic']} of {primary['condition']}, "
        f"{primary['sidedness']}): [{colour}]{primary['verdict']}[/]"
    )
    cal = result.get("calibration")
    if cal and cal.get("studies"):
        low, high = cal["interval_99"]
        console.print(
            f"calibration: type-I error {cal['type_i_error']:.3f} over {cal['studies']} null "
            f"studies at alpha={cal['alpha']:g} (99% interval {low:.3f}-{high:.3f}): "
            + ("[green]calibrated[/]" if cal["calibrated"] else "[red]NOT calibrated[/]")
        )
