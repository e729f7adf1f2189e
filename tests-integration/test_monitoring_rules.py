"""The monitoring files: alert rules (promtool check + unit tests), Prometheus configs, dashboard.

promtool comes from Debian's prometheus package (see prom_support). The dashboard's
queries are checked by the same PromQL parser: each becomes a recording rule of a
throw-away rules file that ``promtool check rules`` must accept.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prom_support import prometheus_binaries

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "deployments" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "qr-sampler.json"

# Grafana's variables, replaced by values Prometheus accepts (what Grafana sends).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$qr_source": ".*",
    "$source": ".*",
}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    _, tool = prometheus_binaries()
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL with Grafana variables substituted) of every panel and variable."""
    data = json.loads(DASHBOARD.read_text())
    out = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
            assert match, variable["definition"]
            out.append((f"variable {variable['name']}", match.group(1)))
    substituted = []
    for where, raw in out:
        expr = raw
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr}"
        substituted.append((where, expr))
    return substituted


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule whose threshold moved makes its unit test fail: the tests are not vacuous."""
    broken = (MONITORING / "alerts.yml").read_text().replace("> 0.01", "> 0.5")
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts.test.yml").write_text((MONITORING / "alerts.test.yml").read_text())
    result = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "QRSamplerFallbackRatioHigh" in result.stdout + result.stderr


def test_every_alert_fires_in_a_test_stays_quiet_in_one_and_has_a_runbook() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    evaluations: dict[str, list[bool]] = {}
    for test in tests:
        for case in test["alert_rule_test"]:
            evaluations.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    runbook = (MONITORING / "README.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert True in evaluations.get(name, []), f"{name} never fires in alerts.test.yml"
        assert False in evaluations.get(name, []), f"{name} is never checked quiet"
        assert rule["annotations"]["summary"]
        link = rule["annotations"]["runbook"]
        assert link == f"README.md#{name.lower()}"
        assert name.lower() in anchors, f"{name}: no runbook section in monitoring/README.md"


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-plugin-only.yml"])
def test_compose_prometheus_configs_are_valid(config: str) -> None:
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # A query that does not parse makes the same check fail.
    rules["groups"][0]["rules"].append({"record": "dashboard:bad", "expr": "sum(rate(x[1m])"})
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path).returncode != 0


def test_the_dashboard_shows_every_metric_and_its_panels_do_not_overlap() -> None:
    from prometheus_client import generate_latest
    from qr_entropy import EntropySettings, EntropySourceRegistry
    from qr_grpc import QuantumGrpcSource
    from qr_grpc._server_metrics import ServerMetrics
    from qr_vllm._drift import DriftMonitor
    from qr_vllm._metrics import SamplerMetrics
    from qr_vllm._metrics_export import register, registry, unregister

    grpc_source = QuantumGrpcSource()
    metrics = SamplerMetrics(grpc_source, DriftMonitor(10, 0.0), records=dict)
    metrics.drift.observe("default", [0.0])  # type: ignore[arg-type]
    register(metrics)
    try:
        text = generate_latest(registry()).decode()
    finally:
        unregister(metrics)
        grpc_source.close()
    server_source = EntropySourceRegistry.build("system", EntropySettings())
    text += generate_latest(ServerMetrics(server_source).registry).decode()
    names = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.MULTILINE))
    names = {n for n in names if n.startswith(("qr_sampler_", "qr_entropy_server_"))}
    assert len(names) >= 20
    exprs = " ".join(expr for _, expr in dashboard_queries())
    missing = sorted(n for n in names if n not in exprs)
    assert not missing, f"metrics with no dashboard panel: {missing}"
    readme = (REPO / "README.md").read_text()
    undocumented = sorted(n for n in names if f"`{n}" not in readme)
    assert not undocumented, f"metrics missing from the README's Monitoring section: {undocumented}"
    cells: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))


def test_per_source_panels_follow_the_qr_source_variable() -> None:
    """Every panel of a per-source plugin metric filters on, and shows, the named source."""
    data = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in data["templating"]["list"]]
    assert names[:2] == ["qr_source", "source"]
    unlabelled = ("qr_sampler_records_", "qr_sampler_step_seconds")  # per engine / per step
    checked = 0
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            metrics = set(re.findall(r"qr_sampler_\w+", expr))
            if not metrics or all(m.startswith(unlabelled) for m in metrics):
                continue
            where = f"panel {panel['title']!r} {target['refId']}"
            selectors = re.findall(r"qr_sampler_\w+\{([^}]*)\}", expr)
            assert len(selectors) == expr.count("qr_sampler_"), f"{where}: {expr}"
            for selector in selectors:
                assert 'qr_source=~"$qr_source"' in selector, f"{where}: {expr}"
            assert "{{qr_source}}" in target["legendFormat"], where
            checked += 1
    assert checked >= 12
