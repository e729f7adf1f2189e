"""``qr-lab report``: one self-contained HTML file (plots inline as base64 PNG, no network)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from qr_lab._analyze import analyze_loaded
from qr_lab._plots import render

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}.primary{background:#fff6d5}
.verdict{font-size:1.2rem;padding:.6rem;border:2px solid #888}.reject{border-color:#c33}
figure{margin:1rem 0}img{max-width:100%}code{font-size:.9em}
"""


def _f(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _conditions_table(result: dict[str, Any]) -> str:
    primary = result["primary"]
    head = (
        "<tr><th>condition</th><th>predicted</th><th>trials</th><th>tokens</th>"
        "<th>mean z [95% CI]</th><th>Stouffer Z</th><th>p</th><th>χ² (df)</th><th>p(χ²)</th>"
        "<th>KS D</th><th>p(KS)</th></tr>"
    )
    rows = []
    for name, c in result["conditions"].items():
        is_primary = primary["condition"] == name and primary["statistic"] != "difference"
        m = c["mean_z"]
        rows.append(
            f"<tr class='{'primary' if is_primary else ''}'><td>{_e(name)}"
            f"{' (primary: ' + _e(primary['statistic']) + ')' if is_primary else ''}</td>"
            f"<td>{_e(c['predicted'])}</td><td>{c['trials']}</td><td>{c['tokens']}</td>"
            f"<td>{_f(m['mean'], '+.4f')} [{_f(m['low'], '+.4f')}, {_f(m['high'], '+.4f')}]</td>"
            f"<td>{_f(c['stouffer']['z'], '+.3f')}</td><td>{_f(c['stouffer']['p'])}</td>"
            f"<td>{_f(c['chi2']['chi2'], '.2f')} ({c['chi2']['df']})</td>"
            f"<td>{_f(c['chi2']['p'])}</td><td>{_f(c['ks_u']['d'])}</td>"
            f"<td>{_f(c['ks_u']['p'])}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _exclusions_table(result: dict[str, Any]) -> str:
    conds = result["conditions"]
    steps = [s["step"] for s in next(iter(conds.values()))["exclusions"]]
    head = "<tr><th>condition</th>" + "".join(f"<th>{_e(s)}</th>" for s in steps) + "</tr>"
    rows = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(
            f"<td>{s['remaining']}" + (f" (−{s['excluded']})" if s["excluded"] else "") + "</td>"
            for s in c["exclusions"]
        )
        + "</tr>"
        for name, c in conds.items()
    )
    return f"<table>{head}{rows}</table>"


def build_html(result: dict[str, Any], plots: list[tuple[str, str, bytes]]) -> str:
    """The report's HTML text."""
    primary = result["primary"]
    reg = result["run"]["registration"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>qr-lab report: {_e(result['study'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study “{_e(result['study'])}”</h1>",
        f"<p>Pre-registration hash <code id='registration-hash'>{_e(reg['hash'])}</code>, "
        f"registered {_e(reg['registered_at'])}. Trials finished: "
        f"{result['run']['finished_trials']} of {result['run']['planned_trials']}, "
        f"failed requests: {result['run']['failed_requests']}.</p>",
        f"<p id='verdict' class='verdict {'reject' if primary['reject_null'] else ''}'>"
        f"<b>Primary test</b> (pre-registered: {_e(primary['statistic'])} of "
        f"{_e(primary['condition'])}, {_e(primary['sidedness'])}, value "
        f"{_f(primary['value'])}): {_e(primary['verdict'])}</p>",
        "<p>Every other number in this report is exploratory.</p>",
        "<h2>Exclusions (tokens remaining after each step)</h2>",
        _exclusions_table(result),
        "<h2>Per condition</h2>",
        _conditions_table(result),
    ]
    if "difference" in result:
        d = result["difference"]
        parts.append(
            f"<p>{_e(d['test'])} − {_e(d['control'])}: difference of mean z "
            f"{_f(d['difference'], '+.4f')}, permutation p = {_f(d['p'])} "
            f"({'exact' if d['exact'] else str(d['permutations']) + ' permutations'}, "
            f"{_e(d['alternative'])}).</p>"
        )
    cal = result.get("calibration")
    if cal and cal.get("studies"):
        low, high = cal["interval_99"]
        parts.append(
            f"<p>Calibration: type-I error of the primary test {cal['type_i_error']:.3f} over "
            f"{cal['studies']} simulated null studies at α = {cal['alpha']:g} (99% interval "
            f"{low:.3f}–{high:.3f}): {'calibrated' if cal['calibrated'] else 'NOT calibrated'}.</p>"
        )
    parts.append("<h2>Plots</h2>")
    for pid, title, png in plots:
        data = base64.b64encode(png).decode()
        parts.append(
            f"<figure><img class='plot' id='plot-{pid}' alt='{_e(title)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{_e(title)}</figcaption></figure>"
        )
    parts.append(
        "<h2>Analysis (JSON)</h2><details><summary>show</summary><pre>"
        + _e(json.dumps(result, indent=2))
        + "</pre></details></body></html>"
    )
    return "\n".join(parts)


def write_report(run_dir: Path, out: Path) -> dict[str, Any]:
    """Analyze the run and write its report to ``out``; returns the analysis."""
    result, table = analyze_loaded(Path(run_dir))
    out.write_text(build_html(result, render(table)), encoding="utf-8")
    return result
