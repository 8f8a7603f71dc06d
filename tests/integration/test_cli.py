"""The commands a newcomer runs: gatekeeper serve, gatekeeper check, gatekeeper-loader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import on_both_redis
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY
from tests.servers import PostgresServer, RedisServer, free_port

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def cli_env(redis_server: RedisServer, database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    redis_server.client().flushall()
    listen = f"127.0.0.1:{free_port()}"
    spool = str(tmp_path / "audit-spool")
    yield {**os.environ, "REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": listen} | {
        "GATEKEEPER_AUDIT_SPOOL_DIR": spool,
        "DATABASE_URL": database_url,
    }


def start_serving(env: dict[str, str], *extra: str, workers: int = 1) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(BIN / "gatekeeper"), "serve", *extra], env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    serving = 0
    for line in process.stderr:  # the ready signal: each worker's health turns SERVING once data is there
        serving += "health: SERVING" in line
        if serving == workers:
            return process
    process.wait(timeout=10)
    raise AssertionError(f"gatekeeper serve exited with {process.returncode}")


def test_a_bad_environment_value_is_one_line_not_a_traceback(cli_env: dict[str, str]) -> None:
    env = cli_env | {"GATEKEEPER_WORKERS": "abc"}
    assert run(str(BIN / "gatekeeper"), "--version", env=env).returncode == 0
    served = run(str(BIN / "gatekeeper"), "serve", env=env)
    assert served.returncode == 2
    assert served.stderr.splitlines() == [
        "gatekeeper serve: GATEKEEPER_WORKERS='abc': expected a whole number, at least 1"
    ]


@on_both_redis
def test_load_serve_check_and_drain_on_sigterm(cli_env: dict[str, str]) -> None:
    loaded = run(str(BIN / "gatekeeper-loader"), "snapshot", str(DEMO_REGISTRY), env=cli_env)
    assert loaded.returncode == 0, loaded.stderr
    assert "9 practitioners from 15 rows" in loaded.stdout

    server = start_serving(cli_env)
    try:
        checked = run(str(BIN / "gatekeeper"), "check", str(DEMO_CLAIM), env=cli_env)
        assert checked.returncode == 0, checked.stderr
        lines = checked.stdout.splitlines()
        rows = {line.split()[0]: line.split()[1:3] for line in lines[2:11]}
        assert rows["2"] == ["BLOCK", "SUSPENDED"]
        assert rows["3"] == ["ALLOW_EXEMPT", "EMERGENCY_EXEMPT"]
        assert rows["6"] == ["BLOCK", "MALFORMED_CODE"]
        assert "claim PARTIAL: allowed 156.00, blocked 175.50" in checked.stdout
        words = (
            "开单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），本项目不予医保结算；急诊、抢救除外"
        )
        assert f"2           {words}" in lines  # the cashier's words under the table

        looked_up = run(
            str(BIN / "gatekeeper"), "practitioner", "D410102000002", "--at", "2026-11-20 09:00:00", env=cli_env
        )
        assert '"status": "PRACTITIONER_STATUS_SUSPENDED"' in looked_up.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "draining" in stderr and "stopped" in stderr


def test_check_reports_errors_plainly(cli_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "claim.json"
    broken.write_text('{"claim_id": "x", "itemz": []}', encoding="utf-8")
    result = run(str(BIN / "gatekeeper"), "check", str(broken), env=cli_env)
    assert result.returncode == 2
    assert "itemz" in result.stderr and "Traceback" not in result.stderr


def test_two_workers_share_one_port(cli_env: dict[str, str]) -> None:
    assert run(str(BIN / "gatekeeper-loader"), "snapshot", str(DEMO_REGISTRY), env=cli_env).returncode == 0
    server = start_serving(cli_env, "--workers", "2", workers=2)
    try:
        with grpc.insecure_channel(cli_env["GATEKEEPER_LISTEN"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        workers = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True)
        assert len(workers.stdout.split()) == 2
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    assert server.returncode == 0, log


def test_serve_refuses_a_decision_record_on_a_schema_it_does_not_know(
    cli_env: dict[str, str], postgres_server: PostgresServer
) -> None:
    name = f"unmigrated_{os.getpid()}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    env = cli_env | {"DATABASE_URL": postgres_server.url(name)}
    try:
        served = run(str(BIN / "gatekeeper"), "serve", env=env)
        assert served.returncode == 2
        assert served.stderr.splitlines() == [
            "gatekeeper serve: the decision record's schema is at version 0, this gatekeeper needs 1: "
            "run `gatekeeper audit migrate`"
        ]
        migrated = run(
            str(BIN / "gatekeeper"), "audit", "migrate", env=cli_env | {"DATABASE_URL": postgres_server.url(name)}
        )
        assert (migrated.returncode, migrated.stdout.splitlines()[-1]) == (
            0,
            "the decision record is at schema version 1",
        )
    finally:
        with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")
