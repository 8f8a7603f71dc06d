"""The decision record against a real PostgreSQL and real servers: every decision and item,
the spool and its replay without duplicates, the commands, what happens when nothing can be
recorded, and Redis lost and restarted empty under traffic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import msgspec
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatekeeper.audit.database import ensure_partitions, partition_days
from gatekeeper.audit.export import Period, records_in
from gatekeeper.audit.records import AuditItem, AuditRecord, Batch, Entry, entry_of
from gatekeeper.audit.spool import SPOOL_PATTERN, Spool
from gatekeeper.audit.writer import PostgresRecordStore
from gatekeeper.cli import main
from gatekeeper.core.cst import CST, format_cst, parse_cst
from gatekeeper.core.policy import Policy, RegionPolicy, Unrecorded
from gatekeeper.core.records import PractitionerRecord, Status, StatusPeriod
from gatekeeper.core.rules import Claim, Item, decide_claim
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_check_claim import demo_claim
from tests.servers import PostgresServer, RedisServer, free_port, start_postgres, start_redis

BIN = Path(sys.executable).parent
WAIT_SECONDS = 10.0
EVERYTHING = Period(0, 2**42)


def wait_until(condition: Callable[[], object], what: str, seconds: float = WAIT_SECONDS) -> None:
    """Poll a condition with a bound (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def audited(database_url: str) -> list[AuditRecord]:
    """Every decision in the record, oldest first."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        return list(records_in(connection, EVERYTHING))


def test_the_database_records_each_decision_and_every_item_with_its_inputs(database_url: str) -> None:
    """The writer hands the database entries (the claim and its decision as decided); the
    database expands them into the rows review and the export read."""
    regular, suspended, unread = "D110105000001", "D410102000002", "D330522000006"
    when = parse_cst("2026-11-20 10:00:00")
    held = {
        regular: PractitionerRecord(1, (StatusPeriod(Status.REGISTERED, parse_cst("2020-01-01 00:00:00"), 1, 1),)),
        suspended: PractitionerRecord(
            1,
            (StatusPeriod(Status.SUSPENDED, parse_cst("2026-10-01 00:00:00"), 2, 1, parse_cst("2027-01-01 00:00:00")),),
        ),
    }
    degraded = Claim(
        "CLAIM-1",
        "H41130200746",
        (
            Item("1", when, 100, (regular,), False),
            Item("2", when, 200, (regular, suspended), True),  # an emergency: exempt from the suspension
            Item("3", when, 400, (unread,), False),
            Item("4", when, -50, ("", regular), False),  # a refund, its ordering practitioner missing
        ),
    )
    decision = decide_claim(degraded, held, RegionPolicy(), frozenset({unread}))
    decided_at_ms = parse_cst("2026-11-20 10:00:05") * 1000 + 250
    entry = Entry("d-1", degraded, decision, "snap@7", decided_at_ms)

    async def write() -> bool:
        store = PostgresRecordStore(database_url)
        try:
            return await store.write(Batch("b-1", (entry,)))
        finally:
            await store.close()

    assert asyncio.run(write()) is True
    [recorded] = audited(database_url)
    assert recorded == AuditRecord(
        "d-1",
        "CLAIM-1",
        "H41130200746",
        decided_at_ms,
        "snap@7",
        "PARTIAL",
        True,
        700,  # 100 + 200 + 400
        -50,  # the refund's line is blocked
        (
            AuditItem("1", when, 100, False, regular, "", "ALLOW", "OK", "", True),
            AuditItem("2", when, 200, True, regular, suspended, "ALLOW_EXEMPT", "EMERGENCY_EXEMPT", suspended, True),
            AuditItem("3", when, 400, False, unread, "", "ALLOW", "UNVERIFIED", unread, False),
            AuditItem("4", when, -50, False, "", regular, "BLOCK", "MISSING_PRACTITIONER", "", True),
        ),
    )
    assert asyncio.run(write()) is False  # the same batch again: already written


def claim_request(
    claim_id: str, code: str = "D410102000002", executing: str = "", emergency: bool = False
) -> pb.CheckClaimRequest:
    item = pb.LineItem(
        feedetl_sn="1",
        fee_ocur_time="2026-11-20 10:00:00",
        bilg_dr_codg=code,
        orders_dr_code=executing,
        amount_fen=100,
        emergency=emergency,
    )
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code="H41130200746", items=[item])


def test_every_decision_reaches_the_record_with_each_items_inputs(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, database_url: str
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    single = gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)
    batch = gatekeeper.stub.CheckClaims(
        pb.CheckClaimsRequest(
            claims=[claim_request("b1", executing="D120101000008", emergency=True), claim_request("")]
        ),
        timeout=5,
    )
    assert batch.results[1].WhichOneof("result") == "error"  # an invalid claim is not a decision

    wait_until(lambda: len(audited(database_url)) == 2, "both decisions are in the record")
    by_id = {record.decision_id: record for record in audited(database_url)}
    record = by_id[single.decision_id]
    assert (record.claim_id, record.fixmedins_code) == (demo_claim().claim_id, demo_claim().fixmedins_code)
    assert (record.registry_version, record.verdict) == (single.registry_version, "PARTIAL")
    assert [(i.feedetl_sn, i.reason, i.prac_psn_code, i.amount_fen) for i in record.items] == [
        (i.feedetl_sn, pb.Reason.Name(i.reason).removeprefix("REASON_"), i.prac_psn_code, i.amount_fen)
        for i in single.items
    ]
    assert [format_cst(i.fee_ocur_time) for i in record.items] == [i.fee_ocur_time for i in demo_claim().items]
    assert abs(record.decided_at_ms / 1000 - time.time()) < 60
    # An allowed item carries its inputs too: service time, every practitioner, the emergency flag.
    item = by_id[batch.results[0].response.decision_id].items[0]
    assert (item.bilg_dr_codg, item.orders_dr_code, item.emergency) == ("D410102000002", "D120101000008", True)
    assert item.fee_ocur_time == parse_cst("2026-11-20 10:00:00")


def test_the_audit_commands_export_look_up_and_count(
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    ids = [gatekeeper.stub.CheckClaim(claim_request(f"c{n}"), timeout=5).decision_id for n in range(3)]
    other = demo_claim()
    other.fixmedins_code = "H11010500001"
    ids.append(gatekeeper.stub.CheckClaim(other, timeout=5).decision_id)
    wait_until(lambda: len(audited(database_url)) == 4, "every decision is in the record")
    now = int(time.time())
    database = ["--database-url", database_url]
    period = ["--since", format_cst(now - 3600), "--until", format_cst(now + 3600), *database]

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exited:
            main(["audit", *args])
        return int(exited.value.code or 0), capsys.readouterr().out

    code, out = run("export", *period, "--institution", "H41130200746")
    assert code == 0
    assert sorted(json.loads(line)["decision_id"] for line in out.splitlines()) == sorted(ids[:3])
    assert json.loads(out.splitlines()[0])["items"][0]["fee_ocur_time"] == "2026-11-20 10:00:00"

    code, out = run("export", *period, "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 1 + 3 + len(other.items)

    code, out = run("claim", "c1", *database)
    assert code == 0 and [json.loads(line)["decision_id"] for line in out.splitlines()] == [ids[1]]
    assert run("claim", "no-such-claim", *database)[0] == 1

    code, out = run("counts", *period, "--json")
    counts = {(row["fixmedins_code"], row["reason"]): row for row in json.loads(out)}
    assert counts["H41130200746", "SUSPENDED"]["items"] == 3
    assert counts["H41130200746", "SUSPENDED"]["practitioners"] == 1
    assert counts["H11010500001", "TERMINATED"]["items"] == 2

    earlier = ["--since", format_cst(now - 7200), "--until", format_cst(now - 3600), *database]
    assert run("export", *earlier)[1] == ""  # selected by decision time


def write_orphan(directory: Path, batch_id: str, records: list[AuditRecord], spooled_as: str) -> Path:
    """A spool file left by a process that is gone: a batch of entries, or of records as an
    earlier version spooled them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "audit-1-crashed.spool"
    if spooled_as == "entries":
        line = msgspec.json.encode(Batch(batch_id, tuple(entry_of(r) for r in records)))
    else:
        line = msgspec.json.encode({"batch_id": batch_id, "records": records})
    path.write_bytes(line + b"\n")
    return path


def forget_everything(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE decisions, decision_items, audit_batches")


@pytest.mark.parametrize("spooled_as", ["entries", "records"])
def test_a_dead_process_spool_is_replayed_once_even_when_replayed_twice(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, database_url: str, tmp_path: Path, spooled_as: str
) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    for n in range(2):
        gatekeeper.stub.CheckClaim(claim_request(f"s{n}"), timeout=5)
    wait_until(lambda: len(audited(database_url)) == 2, "the decisions are in the record")
    records = audited(database_url)
    forget_everything(database_url)
    spool_dir = tmp_path / "shared-spool"

    orphan = write_orphan(spool_dir, "batch-from-a-crash", records, spooled_as)
    start_gatekeeper(audit_spool_dir=spool_dir)
    wait_until(lambda: not orphan.exists(), "the orphan spool is replayed and removed")
    assert Counter(r.decision_id for r in audited(database_url)) == Counter(r.decision_id for r in records)
    assert audited(database_url) == records  # the same records, items and all

    # A process that crashed after the database committed the batch but before it removed the file.
    orphan = write_orphan(spool_dir, "batch-from-a-crash", records, spooled_as)
    start_gatekeeper(audit_spool_dir=spool_dir)
    wait_until(lambda: not orphan.exists(), "the orphan spool is replayed again and removed")
    assert len(audited(database_url)) == len(records)  # the batch id was already there


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


@pytest.mark.parametrize("unrecorded", [Unrecorded.REFUSE, Unrecorded.SETTLE])
def test_a_decision_that_cannot_be_recorded_is_not_settled_unseen(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path, unrecorded: Unrecorded
) -> None:
    load(redis_client, DEMO_REGISTRY)
    unwritable = tmp_path / "a-file-not-a-directory"
    unwritable.write_text("")  # the spool cannot be created here
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/gone"
    gatekeeper = start_gatekeeper(
        database_url=nowhere,
        audit_spool_dir=unwritable,
        database_timeout_seconds=1.0,
        policy=Policy(default=RegionPolicy(unrecorded=unrecorded)),
        metrics_listen="127.0.0.1:0",
    )
    target = gatekeeper.target
    gatekeeper.stub.CheckClaim(claim_request("first"), timeout=5)  # taken; its batch then fails both ways
    wait_until(lambda: health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, "health turns NOT_SERVING")
    if unrecorded is Unrecorded.REFUSE:
        with pytest.raises(grpc.RpcError) as refused:
            gatekeeper.stub.CheckClaim(claim_request("next"), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "decision record" in (refused.value.details() or "")
    else:
        settled = gatekeeper.stub.CheckClaim(claim_request("next", code="D120101000008"), timeout=5)
        assert (settled.verdict, settled.enforced) == (pb.CLAIM_VERDICT_ALLOW, False)
        assert [(i.verdict, i.enforced) for i in settled.items] == [(pb.VERDICT_ALLOW, False)]
    assert gatekeeper.metrics_port is not None
    text = urlopen_text(f"http://127.0.0.1:{gatekeeper.metrics_port}/metrics")
    outcome = "refused" if unrecorded is Unrecorded.REFUSE else "settled"
    assert f'gatekeeper_unrecorded_decisions_total{{outcome="{outcome}"}} 1.0' in text


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE gatekeeper")
    assert (
        subprocess.run(
            [str(BIN / "gatekeeper"), "audit", "migrate", "--database-url", server.url("gatekeeper")], check=False
        ).returncode
        == 0
    )
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


def test_sigterm_while_the_database_is_away_spools_every_decision_for_the_next_start(
    private_redis: RedisServer, private_postgres: PostgresServer, tmp_path: Path
) -> None:
    load(private_redis.client(), DEMO_REGISTRY)
    spool_dir = tmp_path / "spool"
    listen = f"127.0.0.1:{free_port()}"
    database_url = private_postgres.url("gatekeeper")
    env = {**os.environ, "REDIS_URL": private_redis.url, "GATEKEEPER_LISTEN": listen, "DATABASE_URL": database_url}
    serve = [str(BIN / "gatekeeper"), "serve", "--workers", "1", "--audit-spool-dir", str(spool_dir)]

    server = start_serving(serve, env, tmp_path / "first.log")
    try:
        with grpc.insecure_channel(listen) as channel:
            stub = pb_grpc.GatekeeperStub(channel)
            stub.CheckClaim(claim_request("warm"), timeout=5)
            wait_until(lambda: len(audited(database_url)) == 1, "the first decision is in the record")
            private_postgres.pg_ctl("stop", "-m", "fast")
            during = [stub.CheckClaim(claim_request(f"away{n}"), timeout=5) for n in range(3)]
    finally:
        assert stop_serving(server) == 0

    spooled = set()
    for orphan in Spool(spool_dir).orphans():
        spooled |= {entry.decision_id for batch in orphan.batches for entry in batch.entries}
        orphan.release()
    assert {d.decision_id for d in during} <= spooled  # on disk before the process ended

    private_postgres.pg_ctl(
        "start",
        "-l",
        str(private_postgres.directory / "postgres.log"),
        "-o",
        (f"-p {private_postgres.port} -k {private_postgres.directory} -c listen_addresses=127.0.0.1"),
    )
    left = list(spool_dir.glob(SPOOL_PATTERN))
    assert left
    server = start_serving(serve, env, tmp_path / "second.log")
    try:
        wait_until(lambda: not any(path.exists() for path in left), "the next start replays the spool")
    finally:
        assert stop_serving(server) == 0
    counts = Counter(r.decision_id for r in audited(database_url))
    assert [counts[d.decision_id] for d in during] == [1, 1, 1]


def test_redis_killed_and_restarted_empty_under_traffic_fails_no_rpc_and_loses_no_decision(
    private_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    load(private_redis.client(), DEMO_REGISTRY)
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "REDIS_URL": private_redis.url, "GATEKEEPER_LISTEN": listen, "DATABASE_URL": database_url}
    serve = [str(BIN / "gatekeeper"), "serve", "--workers", "2", "--audit-spool-dir", str(tmp_path / "spool")]
    server = start_serving(serve, env, tmp_path / "serve.log")
    received: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with grpc.insecure_channel(listen) as channel:
            stub = pb_grpc.GatekeeperStub(channel)
            n = 0
            while not stop.is_set() and n < 5_000:
                try:
                    received.append(stub.CheckClaim(claim_request(f"t{n}"), timeout=5).decision_id)
                except grpc.RpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")
                n += 1

    client = threading.Thread(target=traffic)
    try:
        client.start()
        wait_until(lambda: len(received) > 50, "traffic flows")
        private_redis.process.kill()  # no persistence: everything in it is gone
        private_redis.process.wait()
        during = len(received)
        wait_until(lambda: len(received) > during + 50, "traffic flows without Redis (degraded mode)")
        restarted = start_redis(private_redis.directory, private_redis.port)
        try:
            load(restarted.client(), DEMO_REGISTRY)  # the loader reloads
            after = len(received)
            wait_until(lambda: len(received) > after + 50, "traffic flows after the reload")
        finally:
            stop.set()
            client.join(timeout=30)
            restarted.stop()
    finally:
        stop.set()
        assert stop_serving(server) == 0
    assert failures == []
    now = int(time.time())
    exported = subprocess.run(
        [
            str(BIN / "gatekeeper"),
            "audit",
            "export",
            "--since",
            format_cst(now - 3600),
            "--until",
            format_cst(now + 60),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    counts = Counter(json.loads(line)["decision_id"] for line in exported.stdout.splitlines())
    assert set(counts) == set(received)  # every decision a client received is in `gatekeeper audit export`
    assert set(counts.values()) == {1}  # exactly once


def test_prune_drops_the_days_older_than_the_retention_and_keeps_the_rest(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    today = datetime.now(CST).date()
    with psycopg.connect(database_url, autocommit=True) as connection:
        ensure_partitions(connection, {today - timedelta(days=n) for n in (0, 1, 2, 10)})
        for n in (0, 1, 2, 10):
            connection.execute(
                "INSERT INTO decisions VALUES (%s, %s, 'c', 'H41130200746', 'v@1', 'ALLOW', true, 1, 0, 'b')",
                [datetime.combine(today - timedelta(days=n), datetime.min.time(), CST) + timedelta(hours=12), f"d{n}"],
            )
    with pytest.raises(SystemExit) as exited:
        main(["audit", "prune", "--retention-days", "2", "--database-url", database_url])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(
        f"dropped 2 day(s) of decisions, {today - timedelta(days=10)} to {today - timedelta(days=2)}"
    )
    with psycopg.connect(database_url, autocommit=True) as connection:
        kept = [row[0] for row in connection.execute("SELECT decision_id FROM decisions ORDER BY 1").fetchall()]
        assert kept == ["d0", "d1"]
        assert partition_days(connection) == [today - timedelta(days=1), today]
