"""The commands a newcomer runs: gatekeeper serve, gatekeeper check, gatekeeper-loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatekeeper import __version__, defaults
from gatekeeper.core import native
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper, on_both_redis
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY, load
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
        assert "status              SUSPENDED" in looked_up.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "draining" in stderr and "stopped" in stderr


@pytest.mark.parametrize("switch", ["", "no"])
def test_serve_says_whether_plain_claims_are_decided_in_c(cli_env: dict[str, str], switch: str) -> None:
    assert run(str(BIN / "gatekeeper-loader"), "snapshot", str(DEMO_REGISTRY), env=cli_env).returncode == 0
    env = cli_env | ({"GATEKEEPER_C_PATH": switch} if switch else {})
    process = subprocess.Popen([str(BIN / "gatekeeper"), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        started = next(line for line in process.stderr if "listening on port" in line)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    if switch == "no":
        expected = "every claim in Python: --no-c-path"
    else:
        expected = "plain claims in C" if native.BUILT else "every claim in Python: gatekeeper._speedups was not built"
    assert expected in started


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
            f"the decision record at {postgres_server.url(name)} (env DATABASE_URL) is at schema version 1",
        )
    finally:
        with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


# One CLI: global options, --json, reading stdin, CheckClaims, tables --------------------------


@pytest.fixture
def demo_gatekeeper(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> RunningGatekeeper:
    """A gatekeeper (in this process, real gRPC on loopback) with the demo registry loaded."""
    load(redis_client, DEMO_REGISTRY)
    return start_gatekeeper()


@pytest.fixture
def nowhere() -> str:
    """A loopback HOST:PORT where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def gatekeeper(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "gatekeeper"), *args],
        env=env or dict(os.environ),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def loader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gatekeeper-loader"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_global_options_go_before_or_after_the_command(
    demo_gatekeeper: RunningGatekeeper, redis_server: RedisServer
) -> None:
    target = demo_gatekeeper.target
    before = gatekeeper("--target", target, "--json", "health")
    after = gatekeeper("health", "--target", target, "--json")
    for result in (before, after):
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": "SERVING", "target": target, "target_from": "--target"}

    env = dict(os.environ)
    for args in (
        ("--redis-url", redis_server.url, "--json", "status"),
        ("status", "--redis-url", redis_server.url, "--json"),
    ):
        status = loader(*args, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["redis_url"] == redis_server.url


def test_an_option_given_after_the_command_wins(demo_gatekeeper: RunningGatekeeper, nowhere: str) -> None:
    result = gatekeeper("--target", nowhere, "health", "--target", demo_gatekeeper.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"SERVING: the gatekeeper at {demo_gatekeeper.target} (--target)\n"


def test_a_global_option_a_command_does_not_use_is_refused(tmp_path: Path) -> None:
    result = gatekeeper("--target", "127.0.0.1:1", "audit", "migrate")
    assert (result.returncode, result.stderr) == (
        2,
        "gatekeeper audit migrate: --target means nothing to this command\n",
    )
    result = loader(
        "generate", str(tmp_path / "registry"), "--redis-url", "redis://127.0.0.1:1/0", env=dict(os.environ)
    )
    assert (result.returncode, result.stderr) == (
        2,
        "gatekeeper-loader generate: --redis-url means nothing to this command\n",
    )
    assert not (tmp_path / "registry").exists()


def test_check_reads_a_claim_from_stdin_and_says_whom_it_asked(demo_gatekeeper: RunningGatekeeper) -> None:
    result = gatekeeper("check", "-", "--target", demo_gatekeeper.target, stdin=DEMO_CLAIM.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stderr
    assert "claim PARTIAL: allowed 156.00, blocked 175.50" in result.stdout
    assert result.stdout.splitlines()[-1] == f"asked the gatekeeper at {demo_gatekeeper.target} (--target)"

    as_json = gatekeeper(
        "check", "-", "--json", "--target", demo_gatekeeper.target, stdin=DEMO_CLAIM.read_text(encoding="utf-8")
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["verdict"] == "CLAIM_VERDICT_PARTIAL"  # stdout is the JSON alone
    assert as_json.stderr == f"gatekeeper check: asked the gatekeeper at {demo_gatekeeper.target} (--target)\n"


def test_a_parse_error_names_the_field_in_snake_case(tmp_path: Path) -> None:
    claim = json.loads(DEMO_CLAIM.read_text(encoding="utf-8"))
    claim["items"][0]["amount_fen"] = "many"
    result = gatekeeper("check", "-", "--target", "127.0.0.1:1", stdin=json.dumps(claim))
    assert result.returncode == 2
    assert result.stderr.startswith("gatekeeper check: stdin: ") and "Traceback" not in result.stderr
    assert "amount_fen" in result.stderr and "amountFen" not in result.stderr

    # A field the message does not have: named, with the ones it has, in one line.
    misspelt = json.loads(DEMO_CLAIM.read_text(encoding="utf-8"))
    misspelt["items"][0]["bilg_dr_code"] = misspelt["items"][0].pop("bilg_dr_codg")
    result = gatekeeper("check", "-", "--target", "127.0.0.1:1", stdin=json.dumps(misspelt))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert 'no field named "bilg_dr_code"' in result.stderr
    assert "bilg_dr_codg" in result.stderr and "orders_dr_code" in result.stderr and "bilgDrCodg" not in result.stderr


@pytest.mark.parametrize("form", ["json lines", "json array"])
def test_check_batch_sends_many_claims_in_one_call(
    form: str, demo_gatekeeper: RunningGatekeeper, tmp_path: Path
) -> None:
    claim = json.loads(DEMO_CLAIM.read_text(encoding="utf-8"))
    second = {**claim, "claim_id": "DEMO-CLAIM-0002", "items": claim["items"][:1]}
    bad = {**claim, "claim_id": "DEMO-CLAIM-0003", "fixmedins_code": "not-an-institution"}
    claims = [claim, second, bad]
    path = tmp_path / "claims.json"
    text = json.dumps(claims) if form == "json array" else "\n".join(json.dumps(c) for c in claims) + "\n"
    path.write_text(text, encoding="utf-8")

    result = gatekeeper("check-batch", str(path), "--target", demo_gatekeeper.target)
    assert result.returncode == 1, result.stderr  # one claim refused
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:5]}
    assert rows["DEMO-CLAIM-0001"][:5] == ["PARTIAL", "9", "6", "156.00", "175.50"]
    assert rows["DEMO-CLAIM-0002"][:5] == ["ALLOW", "1", "0", "25.00", "0.00"]
    assert rows["DEMO-CLAIM-0003"][:2] == ["ERROR", "INVALID_ARGUMENT:"]
    assert f"3 claim(s), 1 refused, asked the gatekeeper at {demo_gatekeeper.target} (--target)" in result.stdout

    as_json = gatekeeper("--json", "check-batch", str(path), "--target", demo_gatekeeper.target)
    results = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["claim_id"] for r in results] == ["DEMO-CLAIM-0001", "DEMO-CLAIM-0002", "DEMO-CLAIM-0003"]
    assert results[1]["response"]["verdict"] == "CLAIM_VERDICT_ALLOW"
    assert results[2]["error"]["message"].startswith("fixmedins_code")


def test_practitioner_shows_its_windows_and_a_false_may_bill(demo_gatekeeper: RunningGatekeeper) -> None:
    args = ("practitioner", "D120101000008", "--at", "2026-11-20 09:00:00", "--target", demo_gatekeeper.target)
    result = gatekeeper(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "prac_psn_code       D120101000008 (doctor)",
        "at_time             2026-11-20 09:00:00",
        "status              REGISTERED",
        "may_bill            yes",
        "may_bill_emergency  yes",
    ]
    windows = [line.split()[0:2] for line in lines if line.startswith(("current", "upcoming"))]
    assert windows == [["current", "REGISTERED"], ["upcoming", "SUSPENDED"]]

    suspended = gatekeeper(*args[:2], "--at", "2026-12-15 09:00:00", *args[4:], "--json")
    document = json.loads(suspended.stdout)
    assert (document["status"], document["may_bill"]) == ("PRACTITIONER_STATUS_SUSPENDED", False)  # false, not absent
    table = gatekeeper(*args[:2], "--at", "2026-12-15 09:00:00", *args[4:])
    assert "may_bill            no" in table.stdout


def test_status_is_a_table_naming_the_redis_it_read(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    result = loader("status", env=dict(os.environ) | {"REDIS_URL": redis_server.url})
    assert result.returncode == 0, result.stderr
    facts = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert facts["redis"].strip() == f"{redis_server.url} (env REDIS_URL)"
    assert facts["registry version"].strip() == "demo-20261120@32"
    assert facts["practitioners"].strip() == "9"


def test_both_commands_say_their_version() -> None:
    for command in ("gatekeeper", "gatekeeper-loader"):
        result = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, f"{command} {__version__}\n")


def test_the_commands_read_a_running_demos_addresses(
    demo_gatekeeper: RunningGatekeeper, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    addresses = {"pid": os.getpid(), "target": demo_gatekeeper.target, "redis_url": redis_server.url}
    state.write_text(json.dumps(addresses), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GATEKEEPER_LISTEN")}
    env["GATEKEEPER_DEMO_STATE"] = str(state)

    health = gatekeeper("health", env=env)
    assert health.stdout == f"SERVING: the gatekeeper at {demo_gatekeeper.target} (scripts/demo, {state})\n"
    status = loader("status", "--json", env=env)
    assert json.loads(status.stdout)["redis_url_from"] == f"scripts/demo, {state}"
    # The environment still wins over the demo.
    elsewhere = gatekeeper("health", env=env | {"GATEKEEPER_LISTEN": "127.0.0.1:1"})
    assert "127.0.0.1:1 (env GATEKEEPER_LISTEN)" in elsewhere.stderr

    # A demo that is gone (its process ended) is not read.
    gone = subprocess.Popen(["true"])
    gone.wait()
    state.write_text(json.dumps(addresses | {"pid": gone.pid}), encoding="utf-8")
    stale = gatekeeper("health", "--timeout", "1", env=env)
    assert f"the gatekeeper at {defaults.LISTEN} (default)" in stale.stdout + stale.stderr
