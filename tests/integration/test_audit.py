"""The decision audit against a real Redis and real servers: stream, spool, replay without duplicates, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import msgspec
import pytest
import redis

from gatekeeper.audit.records import AuditRecord, Batch, decode_record
from gatekeeper.audit.spool import SPOOL_PATTERN, Spool
from gatekeeper.cache import keys
from gatekeeper.cli import main
from gatekeeper.core.cst import format_cst
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_check_claim import demo_claim
from tests.servers import RedisServer, free_port, start_redis

BIN = Path(sys.executable).parent
WAIT_SECONDS = 10.0


def wait_until(condition: Callable[[], object], what: str, seconds: float = WAIT_SECONDS) -> None:
    """Poll a condition with a bound (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def audited(client: redis.Redis) -> list[AuditRecord]:
    """Every record in the audit stream, in stream order."""
    return [decode_record(fields[b"record"]) for _, fields in client.xrange(keys.AUDIT)]  # type: ignore[union-attr]


def claim_request(claim_id: str, code: str = "D410102000002") -> pb.CheckClaimRequest:
    item = pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-11-20 10:00:00", bilg_dr_codg=code, amount_fen=100)
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code="H41130200746", items=[item])


def test_every_decision_reaches_the_stream_with_its_items(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    single = gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)
    batch = gatekeeper.stub.CheckClaims(
        pb.CheckClaimsRequest(claims=[claim_request("b1"), claim_request("")]), timeout=5
    )
    assert batch.results[1].WhichOneof("result") == "error"  # an invalid claim is not a decision

    wait_until(lambda: len(audited(redis_client)) == 2, "both decisions are in the stream")
    by_id = {record.decision_id: record for record in audited(redis_client)}
    record = by_id[single.decision_id]
    assert (record.claim_id, record.fixmedins_code) == (demo_claim().claim_id, demo_claim().fixmedins_code)
    assert (record.registry_version, record.verdict) == (single.registry_version, "PARTIAL")
    assert [(i.feedetl_sn, i.reason, i.prac_psn_code, i.amount_fen) for i in record.items] == [
        (i.feedetl_sn, pb.Reason.Name(i.reason).removeprefix("REASON_"), i.prac_psn_code, i.amount_fen)
        for i in single.items
    ]
    assert abs(record.decided_at_ms / 1000 - time.time()) < 60
    assert by_id[batch.results[0].response.decision_id].items[0].reason == "SUSPENDED"
    fields = redis_client.xrange(keys.AUDIT, count=1)[0][1]  # type: ignore[index]
    assert set(fields) == {b"decision_id", b"claim_id", b"fixmedins_code", b"record"}


def test_the_audit_commands_export_look_up_and_count(
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    ids = [gatekeeper.stub.CheckClaim(claim_request(f"c{n}"), timeout=5).decision_id for n in range(3)]
    other = demo_claim()
    other.fixmedins_code = "H11010500001"
    ids.append(gatekeeper.stub.CheckClaim(other, timeout=5).decision_id)
    wait_until(lambda: len(audited(redis_client)) == 4, "every decision is in the stream")
    now = int(time.time())
    period = ["--since", format_cst(now - 3600), "--until", format_cst(now + 3600), "--redis-url", redis_server.url]

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exited:
            main(["audit", *args])
        return int(exited.value.code or 0), capsys.readouterr().out

    code, out = run("export", *period, "--institution", "H41130200746")
    assert code == 0
    assert sorted(json.loads(line)["decision_id"] for line in out.splitlines()) == sorted(ids[:3])

    code, out = run("export", *period, "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 1 + 3 + len(other.items)

    code, out = run("claim", "c1", "--redis-url", redis_server.url)
    assert code == 0 and [json.loads(line)["decision_id"] for line in out.splitlines()] == [ids[1]]
    assert run("claim", "no-such-claim", "--redis-url", redis_server.url)[0] == 1

    code, out = run("counts", *period, "--json")
    counts = {(row["fixmedins_code"], row["reason"]): row for row in json.loads(out)}
    assert counts["H41130200746", "SUSPENDED"]["items"] == 3
    assert counts["H41130200746", "SUSPENDED"]["practitioners"] == 1
    assert counts["H11010500001", "TERMINATED"]["items"] == 2

    earlier = ["--since", format_cst(now - 7200), "--until", format_cst(now - 3600), "--redis-url", redis_server.url]
    assert run("export", *earlier)[1] == ""  # selected by decision time


def write_orphan(directory: Path, batch: Batch) -> Path:
    """A spool file left by a process that is gone."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "audit-1-crashed.spool"
    path.write_bytes(msgspec.json.encode(batch) + b"\n")
    return path


def spooled_batch(client: redis.Redis, start_gatekeeper: StartGatekeeper) -> Batch:
    """Decide two claims, take their records from the stream, and empty it again."""
    gatekeeper = start_gatekeeper()
    for n in range(2):
        gatekeeper.stub.CheckClaim(claim_request(f"s{n}"), timeout=5)
    wait_until(lambda: len(audited(client)) == 2, "the decisions are in the stream")
    records = tuple(audited(client))
    client.delete(keys.AUDIT, keys.AUDIT_BATCHES)
    return Batch("batch-from-a-crash", records)


def test_a_dead_process_spool_is_replayed_once_even_when_replayed_twice(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    batch = spooled_batch(redis_client, start_gatekeeper)
    spool_dir = tmp_path / "shared-spool"

    orphan = write_orphan(spool_dir, batch)
    start_gatekeeper(audit_spool_dir=spool_dir)
    wait_until(lambda: not orphan.exists(), "the orphan spool is replayed and removed")
    assert Counter(r.decision_id for r in audited(redis_client)) == Counter(r.decision_id for r in batch.records)

    # A process that crashed after Redis took the batch but before it removed the file.
    orphan = write_orphan(spool_dir, batch)
    start_gatekeeper(audit_spool_dir=spool_dir)
    wait_until(lambda: not orphan.exists(), "the orphan spool is replayed again and removed")
    assert len(audited(redis_client)) == len(batch.records)  # the batch id was already there


def test_functions_lost_by_redis_are_loaded_again(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    gatekeeper.stub.CheckClaim(claim_request("before"), timeout=5)
    wait_until(lambda: len(audited(redis_client)) == 1, "the first decision is in the stream")
    redis_client.function_delete("gatekeeper_audit")  # as after a restart without persistence
    gatekeeper.stub.CheckClaim(claim_request("after"), timeout=5)
    wait_until(lambda: len(audited(redis_client)) == 2, "the second decision is in the stream")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def start_serving(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``gatekeeper serve`` logging to a file (a pipe nobody reads could fill and stall it),
    returned once its log says health is SERVING."""
    server = subprocess.Popen(command, env=env, stderr=log.open("wb"))
    wait_until(lambda: "health: SERVING" in log.read_text() or server.poll() is not None, "the server is up")
    assert server.poll() is None, log.read_text()
    return server


def stop_serving(server: subprocess.Popen[bytes]) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()


def test_sigterm_while_redis_is_away_spools_every_decision_for_the_next_start(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    load(private_redis.client(), DEMO_REGISTRY)
    spool_dir = tmp_path / "spool"
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "REDIS_URL": private_redis.url, "GATEKEEPER_LISTEN": listen}
    serve = [str(BIN / "gatekeeper"), "serve", "--workers", "1", "--audit-spool-dir", str(spool_dir)]

    server = start_serving(serve, env, tmp_path / "first.log")
    try:
        with grpc.insecure_channel(listen) as channel:
            stub = pb_grpc.GatekeeperStub(channel)
            stub.CheckClaim(claim_request("warm"), timeout=5)
            private_redis.stop()
            during = [stub.CheckClaim(claim_request(f"away{n}"), timeout=5) for n in range(3)]
        assert [d.items[0].reason for d in during] == [pb.REASON_SUSPENDED] * 3  # from the held record
    finally:
        assert stop_serving(server) == 0

    spooled = set()
    for orphan in Spool(spool_dir).orphans():
        spooled |= {record.decision_id for batch in orphan.batches for record in batch.records}
        orphan.release()
    assert {d.decision_id for d in during} <= spooled  # on disk before the process ended

    restarted = start_redis(private_redis.directory, private_redis.port)  # empty: no persistence
    try:
        client = restarted.client()
        load(client, DEMO_REGISTRY)
        left = list(spool_dir.glob(SPOOL_PATTERN))
        assert left
        server = start_serving(serve, env, tmp_path / "second.log")
        try:
            wait_until(lambda: not any(path.exists() for path in left), "the next start replays the spool")
        finally:
            assert stop_serving(server) == 0
        counts = Counter(r.decision_id for r in audited(client))
        assert [counts[d.decision_id] for d in during] == [1, 1, 1]
    finally:
        restarted.stop()
