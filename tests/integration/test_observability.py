"""Metrics over HTTP, JSON logs with the decision id, health bound to the registry data's age."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.cache import keys
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.ops.logs import JsonFormatter
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load, period, write_changes
from tests.integration.test_check_claim import demo_claim, plain_claim, wait_until_serving
from tests.integration.test_cli import BIN, run
from tests.integration.test_errors import BrokenOnceStore
from tests.integration.test_loader_changes import apply
from tests.servers import RedisServer, free_port, start_redis

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHECK_CLAIM = "gatekeeper.v1.Gatekeeper/CheckClaim"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the metrics endpoint, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a condition, bounded in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_health(target: str, status: int) -> None:
    """Follow the health Watch stream (the server's own signal) until it reports ``status``."""
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        for update in stream:
            if update.status == status:
                stream.cancel()
                return
    raise AssertionError(f"health never turned {status}")


def test_metrics_count_decisions_time_rpcs_and_report_the_cache(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(metrics_listen="127.0.0.1:0")
    assert gatekeeper.metrics_port
    wait_until_serving(gatekeeper.target)
    before = scrape(gatekeeper.metrics_port)

    for _ in range(3):
        gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)
    plain = plain_claim()  # decided and answered in C
    gatekeeper.stub.CheckClaim(plain, timeout=5)
    with pytest.raises(grpc.RpcError):
        gatekeeper.stub.CheckClaim(pb.CheckClaimRequest(claim_id="no-items", fixmedins_code="H41010200001"), timeout=5)
    after = scrape(gatekeeper.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # An RPC's duration is observed once its status is sent: the caller may see the status first.
    deadline = time.monotonic() + 5
    while not moved("gatekeeper_rpc_duration_seconds_count", method=CHECK_CLAIM, code="INVALID_ARGUMENT"):
        assert time.monotonic() < deadline, "the refused RPC's duration was never observed"
        time.sleep(0.02)
        after = scrape(gatekeeper.metrics_port)

    items = "gatekeeper_item_decisions_total"
    assert moved(items, verdict="BLOCK", reason="SUSPENDED", enforced="true") == 3  # demo item 2
    assert moved(items, verdict="BLOCK", reason="TERMINATED", enforced="true") == 6  # items 4 and 7
    assert moved(items, verdict="ALLOW_EXEMPT", reason="EMERGENCY_EXEMPT", enforced="true") == 3
    assert moved(items, verdict="ALLOW", reason="OK", enforced="true") == 6 + 2
    assert moved("gatekeeper_claim_decisions_total", verdict="PARTIAL") == 3
    assert moved("gatekeeper_claim_decisions_total", verdict="ALLOW") == 1
    assert moved("gatekeeper_rpc_duration_seconds_count", method=CHECK_CLAIM, code="OK") == 4
    assert moved("gatekeeper_rpc_duration_seconds_count", method=CHECK_CLAIM, code="INVALID_ARGUMENT") == 1
    assert moved("gatekeeper_rpc_duration_seconds_bucket", method=CHECK_CLAIM, code="OK", le="+Inf") == 4
    # Each claim looks up its distinct well-formed codes once; after the first, the near cache has them.
    codes = {c for item in demo_claim().items for c in (item.bilg_dr_codg, item.orders_dr_code)}
    looked_up = len({c for c in codes if RegionPolicy().is_practitioner_code(c)})
    hits = moved("gatekeeper_near_cache_lookups_total", result="hit")
    plain_codes = {c for item in plain.items for c in (item.bilg_dr_codg, item.orders_dr_code) if c}
    assert hits + moved("gatekeeper_near_cache_lookups_total", result="miss") == 3 * looked_up + len(plain_codes)
    assert hits >= 2 * looked_up + len(plain_codes)
    assert 0 <= value(after, "gatekeeper_registry_age_seconds") < 60  # loaded a moment ago
    assert value(after, "gatekeeper_serving") == 1


def test_decisions_in_batches_and_monitor_mode_are_counted_per_claim(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    name = "gatekeeper_claim_decisions_total"
    before = REGISTRY.get_sample_value(name, {"verdict": "PARTIAL"}) or 0.0
    claims = [demo_claim(), demo_claim()]
    claims[1].claim_id = "second"
    gatekeeper.stub.CheckClaims(pb.CheckClaimsRequest(claims=claims), timeout=5)
    assert REGISTRY.get_sample_value(name, {"verdict": "PARTIAL"}) == before + 2


def test_json_log_lines_carry_the_decision_id_of_an_internal_error(start_gatekeeper: StartGatekeeper) -> None:
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("gatekeeper").addHandler(handler)
    try:
        gatekeeper = start_gatekeeper(store=BrokenOnceStore())
        request = pb.CheckClaimRequest(
            claim_id="c",
            fixmedins_code="H11010500001",
            items=[pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg="D110105000001")],
        )
        with pytest.raises(grpc.RpcError) as raised:
            gatekeeper.stub.CheckClaim(request, timeout=5)
    finally:
        logging.getLogger("gatekeeper").removeHandler(handler)

    decision_id = raised.value.details().rsplit(" ", 1)[-1]
    lines = [json.loads(line) for line in output.getvalue().splitlines()]  # every line is one JSON object
    errors = [line for line in lines if line.get("decision_id") == decision_id]
    assert len(errors) == 1, lines
    error = errors[0]
    assert (error["level"], error["logger"], error["message"]) == (
        "ERROR",
        "gatekeeper.api.servicer",
        "CheckClaim failed",
    )
    assert "KeyError" in error["exception"]
    assert error["time"].endswith("+00:00")
    assert any(line["level"] == "WARNING" and "PLAIN TEXT" in line["message"] for line in lines)


def test_health_turns_not_serving_when_the_registry_data_is_too_old(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(max_registry_age_seconds=3600, near_cache_entries=0)
    wait_for_health(gatekeeper.target, SERVING)

    # A snapshot switched two hours ago, and no change applied since.
    redis_client.delete(keys.CHANGES)
    redis_client.hset(keys.META, keys.MetaField.SWITCHED_AT, f"{time.time() - 7200:.3f}")
    wait_for_health(gatekeeper.target, NOT_SERVING)
    assert gatekeeper.stub.CheckClaim(demo_claim(), timeout=5).items  # out of rotation, still answering

    # A change applied now makes the data current again.
    change = period("D410102000002", "C0003", 2, "2026-10-01 00:00:00", "2026-12-01 00:00:00", seq=40)
    apply(redis_client, [write_changes(tmp_path / "changes.jsonl", [change])], tmp_path / "report.jsonl")
    wait_for_health(gatekeeper.target, SERVING)


def test_health_is_not_serving_without_a_snapshot(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    gatekeeper = start_gatekeeper()
    with grpc.insecure_channel(gatekeeper.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == NOT_SERVING
    assert REGISTRY.get_sample_value("gatekeeper_serving") == 0


def test_a_redis_blip_keeps_the_service_in_rotation(start_gatekeeper: StartGatekeeper, tmp_path: Path) -> None:
    redis_server = start_redis(tmp_path)
    try:
        load(redis_server.client(), DEMO_REGISTRY)
        gatekeeper = start_gatekeeper(redis_url=redis_server.url)
        wait_for_health(gatekeeper.target, SERVING)
        errors = {"operation": "health"}
        before = REGISTRY.get_sample_value("gatekeeper_redis_errors_total", errors) or 0.0
    finally:
        redis_server.stop()

    # The watcher has failed to read Redis three times over: health must not have moved.
    wait_for(
        lambda: (REGISTRY.get_sample_value("gatekeeper_redis_errors_total", errors) or 0.0) >= before + 3,
        "three failed health checks",
    )
    with grpc.insecure_channel(gatekeeper.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == SERVING


def test_serve_logs_one_json_object_per_line_and_health_answers_the_container(
    redis_server: RedisServer, redis_client: redis.Redis, database_url: str
) -> None:
    load(redis_client, DEMO_REGISTRY)
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": listen, "DATABASE_URL": database_url}
    env.pop("GATEKEEPER_LOG_FORMAT", None)  # JSON is the default for serve
    server = subprocess.Popen(
        [str(BIN / "gatekeeper"), "serve", "--workers", "1"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    logged = []
    try:
        for line in server.stderr:  # the ready signal: health turns SERVING
            logged.append(json.loads(line))
            if logged[-1]["message"].startswith("health: SERVING"):
                break
        healthy = run(str(BIN / "gatekeeper"), "health", env=env)
        nobody = run(
            str(BIN / "gatekeeper"), "health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "1", env=env
        )
    finally:
        server.send_signal(signal.SIGTERM)
        _, rest = server.communicate(timeout=30)
    logged += [json.loads(line) for line in rest.splitlines()]

    assert (healthy.returncode, healthy.stdout.strip()) == (
        0,
        f"SERVING: the gatekeeper at {listen} (env GATEKEEPER_LISTEN)",
    )
    assert nobody.returncode == 1 and "cannot reach the gatekeeper" in nobody.stderr
    assert server.returncode == 0
    assert {"time", "level", "logger", "message", "pid"} <= set(logged[0])
    warnings = [line["message"] for line in logged if line["level"] == "WARNING"]
    assert any("PLAIN TEXT" in message and "development only" in message for message in warnings)
    assert logged[-1]["message"] == "stopped"


def test_sigusr1_logs_the_near_cache_counts_and_metrics_keep_counting_gc_pauses_included(
    redis_server: RedisServer, redis_client: redis.Redis, database_url: str
) -> None:
    load(redis_client, DEMO_REGISTRY)
    listen, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "GATEKEEPER_LISTEN": listen, "GATEKEEPER_LOG_FORMAT": "json"}
    env["DATABASE_URL"] = database_url
    server = subprocess.Popen(
        [str(BIN / "gatekeeper"), "serve", "--workers", "1", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    logged: list[str] = []

    def read_until(prefix: str) -> None:
        assert server.stderr is not None
        for line in server.stderr:  # the ready signals: log lines
            logged.append(json.loads(line)["message"])
            if logged[-1].startswith(prefix):
                return
        raise AssertionError(f"gatekeeper serve exited before logging {prefix!r}: {logged}")

    def lookups() -> float:
        samples = scrape(metrics_port)
        return value(samples, "gatekeeper_near_cache_lookups_total", result="hit") + value(
            samples, "gatekeeper_near_cache_lookups_total", result="miss"
        )

    try:
        read_until("health: SERVING")
        with grpc.insecure_channel(listen) as channel:
            stub = pb_grpc.GatekeeperStub(channel)
            stub.CheckClaim(demo_claim(), timeout=5)
            before = lookups()
            server.send_signal(signal.SIGUSR1)
            read_until("near cache:")
            stub.CheckClaim(demo_claim(), timeout=5)
            after = lookups()
            # Each RPC leaves a few objects in a cycle inside gRPC, which only the collector
            # frees: a few hundred RPCs take the youngest generation past its threshold (700)
            # more than once.
            for _ in range(300):
                stub.CheckClaim(demo_claim(), timeout=5)
            samples = scrape(metrics_port)
            gc_passes = sum(value(samples, "gatekeeper_gc_pause_seconds_count", generation=g) for g in "012")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert before > 0
    assert after > before  # the counters metrics read were not swapped out by SIGUSR1
    assert gc_passes > 0  # every pause of the garbage collector is observed


def test_a_busy_worker_says_what_it_did_in_its_log(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatekeeper.server")
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(activity_log_seconds=0.2)
    wait_until_serving(gatekeeper.target)
    for _ in range(3):
        gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)

    def reported() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("activity: ")]

    def claims() -> int:
        return sum(int(line.split()[1]) for line in reported())

    deadline = time.monotonic() + 10
    while claims() < 3:
        assert time.monotonic() < deadline, f"the worker logged {reported()} for 3 claims"
        time.sleep(0.05)
    time.sleep(0.5)  # a later interval with nothing decided logs nothing more
    assert claims() == 3  # every claim counted once, whatever the intervals they fell in
    assert "near cache hits" in reported()[0]
