"""The operator's view: the alert rules pass promtool and their own tests; the dashboard shows what they watch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "gatekeeper.json"

# What the operator must see (issue 14), and a metric that shows each.
TOPICS = {
    "registry age": "gatekeeper_registry_age_seconds",
    "unverified decisions": 'reason="UNVERIFIED"',
    "audit refusals": "gatekeeper_unrecorded_decisions_total",
    "audit backlog": "gatekeeper_audit_queued",
    "errors by status": "gatekeeper_rpc_duration_seconds_count",
    "p99 latency": "histogram_quantile(0.99",
    "near-cache hit ratio": 'near_cache_lookups_total{job="gatekeeper", namespace=~"$namespace", result="hit"}',
    "worker restarts": "gatekeeper_worker_restarts",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/install installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promtool_accepts_the_alert_rules() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_each_alert_fires_on_its_series_and_not_before() -> None:
    """alerts.test.yml: promtool evaluates the rules over made-up series, minute by minute."""
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text(encoding="utf-8"))["tests"]
    firing = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]
    }  # each tested alert is seen firing at least once, not only silent
    assert len(firing) >= 7


def test_every_alert_has_a_severity_a_summary_and_a_job_selector() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert 'job="gatekeeper"' in rule["expr"], rule["alert"]


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_the_alerts_and_the_dashboard_cover(topic: str) -> None:
    shown = TOPICS[topic]
    assert any(shown in expr for expr in dashboard_exprs()), f"no dashboard panel shows {topic}"
    watched = shown.replace(', namespace=~"$namespace"', "")
    assert any(watched in rule["expr"] for rule in alert_rules()), f"no alert watches {topic}"


def test_the_dashboard_is_one_grafana_document_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job="gatekeeper", namespace=~"$namespace"' in target["expr"], panel["title"]
