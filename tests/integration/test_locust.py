"""bench/locustfile.py as a settlement platform runs it before go-live: headless, a few users,
a short run, CSV out; against a real gatekeeper, with claims drawn from the registry loaded."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import redis

from tests.integration.conftest import RunningGatekeeper, StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, REPO, load
from tests.integration.test_cli import BIN
from tests.servers import RedisServer

LOCUST = BIN / "locust"  # scripts/install --load (scripts/test runs it) installs it


def locust(*args: str, env: dict[str, str], csv_prefix: Path) -> subprocess.CompletedProcess[str]:
    command = [str(LOCUST), "-f", "bench/locustfile.py", "--headless", "--users", "4", "--spawn-rate", "4"]
    command += ["--run-time", "3s", "--csv", str(csv_prefix), *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_short_headless_run_completes_without_failures(
    start_gatekeeper: StartGatekeeper, redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper: RunningGatekeeper = start_gatekeeper()
    # No --host: the gatekeeper named by the environment, as a running demo's would be.
    env = os.environ | {"REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": gatekeeper.target}
    result = locust(env=env, csv_prefix=tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"the gatekeeper at {gatekeeper.target} (env GATEKEEPER_LISTEN)" in result.stdout
    assert f"claims name 9 practitioners from Redis at {redis_server.url}" in result.stdout

    with (tmp_path / "run_stats.csv").open(encoding="utf-8") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0


def test_it_refuses_to_start_without_a_loaded_registry(
    gatekeeper: RunningGatekeeper, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = os.environ | {"REDIS_URL": redis_server.url}
    result = locust("--host", gatekeeper.target, env=env, csv_prefix=tmp_path / "run")
    assert result.returncode != 0
    assert f"no registry is loaded in Redis at {redis_server.url} (env REDIS_URL)" in result.stdout + result.stderr
