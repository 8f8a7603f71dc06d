"""The dashboard and the alert rules against a running gatekeeper, and a real Prometheus that scrapes it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.cache import keys
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_check_claim import demo_claim, wait_until_serving
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "gatekeeper.json"
PROMETHEUS_READY = "Server is ready to receive web requests"
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target, not exported
STALE_HOURS = 30  # past the alert's 26 h, short of health's 48 h


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    """Each panel's query, with the namespace variable set to every namespace, as Grafana sends it."""
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [target["expr"].replace("$namespace", ".*") for p in panels for target in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label values and strings left out)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", unquoted))
    return {name for name in names if name.startswith(("gatekeeper_", "process_", "python_")) or name == "up"}


def exported_names(port: int) -> set[str]:
    """Every sample name the metrics endpoint serves or would serve (a family with no samples yet counts)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
    return names


def exercised_gatekeeper(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> RunningGatekeeper:
    """A serving gatekeeper that has decided a claim and refused a malformed one."""
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(metrics_listen="127.0.0.1:0")
    wait_until_serving(gatekeeper.target)
    assert gatekeeper.stub.CheckClaim(demo_claim(), timeout=5).items
    with pytest.raises(grpc.RpcError) as refused:
        gatekeeper.stub.CheckClaim(pb.CheckClaimRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gatekeeper.metrics_port is not None
    return gatekeeper


def test_every_metric_the_dashboard_and_the_alerts_use_is_exported(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    gatekeeper = exercised_gatekeeper(start_gatekeeper, redis_client)
    assert gatekeeper.metrics_port is not None
    exported = exported_names(gatekeeper.metrics_port) | PROMETHEUS_OWN
    used = {
        name: where
        for where, expr in [*alert_rules().items(), *(("dashboard", expr) for expr in dashboard_exprs())]
        for name in metric_names(expr)
    }
    assert {"gatekeeper_registry_age_seconds", "gatekeeper_rpc_duration_seconds_bucket"} <= set(used)
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"used but not exported: {missing}"


@dataclass
class Prometheus:
    """A prometheus server of our own on 127.0.0.1."""

    process: subprocess.Popen[str]
    port: int

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) ``expr`` evaluates to now; AssertionError if Prometheus refuses it."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        result = answer["data"]["result"]
        return result if answer["data"]["resultType"] == "vector" else [{"metric": {}, "value": result}]

    def wait_for(self, expr: str, what: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Query until ``expr`` returns something (scrapes come every second), bounded in time."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)
        return result


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus scraping given metrics ports every second as job "gatekeeper"; killed by PID after."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: scripts/install installs Debian's prometheus package")
    started: list[subprocess.Popen[str]] = []

    def start(*metrics_ports: int) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "gatekeeper", "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in metrics_ports]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        command = [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(process)
        ready = threading.Event()
        log: list[str] = []

        def read_log() -> None:  # the ready signal, then keep draining the log
            assert process.stderr is not None
            for line in process.stderr:
                log.append(line)
                if PROMETHEUS_READY in line:
                    ready.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not ready.wait(timeout=20):
            raise RuntimeError("prometheus did not start:\n" + "".join(log))
        return Prometheus(process, port)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_prometheus_scrapes_the_gatekeeper_and_the_stale_registry_alert_fires_only_when_stale(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, start_prometheus: Any
) -> None:
    gatekeeper = exercised_gatekeeper(start_gatekeeper, redis_client)
    prometheus = start_prometheus(gatekeeper.metrics_port)
    stale = alert_rules()["GatekeeperRegistryStale"]

    # Fresh registry data: scraped, and the alert's expression selects nothing.
    scraped = prometheus.wait_for('gatekeeper_registry_age_seconds{job="gatekeeper"}', "a scrape of the gatekeeper")
    assert float(scraped[0]["value"][1]) < 600
    assert prometheus.query(stale) == []

    # Every query of the dashboard and every alert is one this Prometheus accepts and evaluates.
    for expr in [*dashboard_exprs(), *alert_rules().values()]:
        prometheus.query(expr)
    assert prometheus.query('sum(gatekeeper_claim_decisions_total{job="gatekeeper"})')  # the claim above, scraped

    # The snapshot was switched 30 hours ago and nothing was applied since (a missed daily load).
    redis_client.delete(keys.CHANGES)
    redis_client.hset(keys.META, keys.MetaField.SWITCHED_AT, f"{time.time() - STALE_HOURS * 3600:.3f}")
    firing = prometheus.wait_for(stale, "the stale-registry alert's expression to select the gatekeeper")
    assert len(firing) == 1
    assert abs(float(firing[0]["value"][1]) - STALE_HOURS * 3600) < 120
