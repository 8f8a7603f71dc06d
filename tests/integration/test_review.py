"""Retroactive review end to end: a registry loaded, claims settled, then a backdated
suspension, a withdrawn window and a shortened one published through ``apply`` and through
``follow``. The findings, on demand and continuous, are exactly the affected items:
emergency items stay exempt and items outside the windows stay untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.cst import format_cst
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.feed import ChangeFeedServer
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import period, write_changes, write_snapshot
from tests.integration.test_audit import audited, wait_until
from tests.integration.test_loader_changes import apply
from tests.integration.test_loader_follow import start_follower
from tests.servers import RedisServer

BIN = Path(sys.executable).parent
INSTITUTION = "H41130200746"
SETTLED_LATER = "D410102000004"  # registered; a suspension from 11-05 is published late
APPEALED = "D410102000005"  # suspended from 11-01; the window is withdrawn on appeal
REDUCED = "D410102000006"  # suspended from 10-01 to 2027; shortened to end 11-10
CLEAN = "D410102000007"  # registered throughout

REGISTRY = [
    period(SETTLED_LATER, "late-r", 1, "2020-01-01 00:00:00", seq=1),
    period(APPEALED, "appealed-r", 1, "2020-01-01 00:00:00", seq=2),
    period(APPEALED, "appealed-s", 2, "2026-11-01 00:00:00", "2027-01-01 00:00:00", seq=3, chg_rea="记分 9 分"),
    period(REDUCED, "reduced-r", 1, "2020-01-01 00:00:00", seq=4),
    period(REDUCED, "reduced-s", 2, "2026-10-01 00:00:00", "2027-01-01 00:00:00", seq=5, chg_rea="记分 10 分"),
    period(CLEAN, "clean-r", 1, "2020-01-01 00:00:00", seq=6),
]
CHANGES = [
    # A suspension decided today that starts weeks ago.
    period(SETTLED_LATER, "late-s", 2, "2026-11-05 00:00:00", "2027-01-05 00:00:00", seq=7, chg_rea="补录暂停"),
    # The appeal succeeded: the window is withdrawn.
    period(APPEALED, "appealed-s", 2, "2026-11-01 00:00:00", "2027-01-01 00:00:00", seq=8, vali_flag=0),
    # Points reduced: the suspension ends on 11-10 instead.
    period(REDUCED, "reduced-s", 2, "2026-10-01 00:00:00", "2026-11-10 00:00:00", seq=9, chg_rea="记分 10 分"),
]


def line(sn: str, when: str, code: str, amount: int, emergency: bool = False) -> pb.LineItem:
    return pb.LineItem(feedetl_sn=sn, fee_ocur_time=when, bilg_dr_codg=code, amount_fen=amount, emergency=emergency)


CLAIMS = {
    "late": [
        line("1", "2026-11-10 09:00:00", SETTLED_LATER, 1_000),  # inside the late window: recover
        line("2", "2026-11-01 09:00:00", SETTLED_LATER, 2_000),  # before it: untouched
        line("3", "2026-11-10 10:00:00", SETTLED_LATER, 3_000, emergency=True),  # emergency: exempt
    ],
    "appealed": [
        line("1", "2026-11-10 09:00:00", APPEALED, 4_000),  # blocked, window withdrawn: resettle
        line("2", "2026-10-20 09:00:00", APPEALED, 5_000),  # before the window, paid: untouched
    ],
    "reduced": [
        line("1", "2026-11-15 09:00:00", REDUCED, 6_000),  # blocked, now after the new end: resettle
        line("2", "2026-11-05 09:00:00", REDUCED, 7_000),  # still inside the shortened window: untouched
    ],
    "clean": [line("1", "2026-11-10 09:00:00", CLEAN, 8_000)],
}
# (claim_id, feedetl_sn) -> (action, amount, now_reason)
EXPECTED = {
    ("late", "1"): ("recover", 1_000, "SUSPENDED"),
    ("appealed", "1"): ("resettle", 4_000, "OK"),
    ("reduced", "1"): ("resettle", 6_000, "OK"),
}


def settle(start_gatekeeper: StartGatekeeper, redis_server: RedisServer, directory: Path, database_url: str) -> None:
    """Load the registry and settle every claim; return once all are recorded."""
    snapshot = write_snapshot(directory, REGISTRY, snapshot_id="review")
    subprocess.run(
        [str(BIN / "gatekeeper-loader"), "--redis-url", redis_server.url, "snapshot", str(snapshot)],
        check=True,
        capture_output=True,
    )
    gatekeeper = start_gatekeeper()
    for claim_id, items in CLAIMS.items():
        gatekeeper.stub.CheckClaim(
            pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code=INSTITUTION, items=items), timeout=5
        )
    wait_until(lambda: len(audited(database_url)) == len(CLAIMS), "every decision is recorded")


def publish_by_apply(client: redis.Redis, directory: Path, _server: RedisServer) -> Callable[[], None]:
    changes = write_changes(directory / "changes-7-9.jsonl", CHANGES)

    def publish() -> None:
        apply(client, [changes], directory / "apply.quarantine.jsonl")

    return publish


def publish_by_follow(client: redis.Redis, directory: Path, server: RedisServer) -> Callable[[], None]:
    feed_dir = directory / "feed"
    feed_dir.mkdir()
    write_changes(feed_dir / "changes-7-9.jsonl", CHANGES)

    def publish() -> None:
        client.set(keys.FOLLOW_CURSOR, 6)  # the snapshot's watermark: what follow resumes after
        with ChangeFeedServer(feed_dir) as feed:
            follower = start_follower(server.port, feed.url, directory / "follow.quarantine.jsonl")
            try:
                follower.wait_for_cursor(client, 9)
            finally:
                follower.stop()

    return publish


def findings_on_demand(env: dict[str, str]) -> dict[tuple[str, str], tuple[str, int, str]]:
    now = int(time.time())
    period = ("--since", format_cst(now - 3600), "--until", format_cst(now + 3600))
    result = subprocess.run(
        [str(BIN / "gatekeeper"), "review", "--format", "jsonl", *period],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = [json.loads(text) for text in result.stdout.splitlines()]
    return {(f["claim_id"], f["feedetl_sn"]): (f["action"], f["amount_fen"], f["now_reason"]) for f in found}


def findings_continuous(env: dict[str, str], database_url: str) -> dict[tuple[str, str], tuple[str, int, str]]:
    result = subprocess.run(
        [str(BIN / "gatekeeper"), "review", "--follow", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT claim_id, feedetl_sn, action, amount_fen, now_reason FROM review_findings"
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


@pytest.mark.parametrize(
    ("publish_with", "redis_server"),
    [(publish_by_apply, "single"), (publish_by_follow, "single"), (publish_by_follow, "cluster")],
    ids=["apply", "follow", "follow-cluster"],
    indirect=["redis_server"],
)
def test_review_finds_exactly_the_items_the_published_windows_affect(
    publish_with: Callable[[redis.Redis, Path, RedisServer], Callable[[], None]],
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    settle(start_gatekeeper, redis_server, tmp_path, database_url)
    env = os.environ | {"REDIS_URL": redis_server.url, "DATABASE_URL": database_url}
    assert findings_on_demand(env) == {}  # nothing has changed yet
    assert findings_continuous(env, database_url) == {}  # the snapshot's switch calls for nothing

    publish = publish_with(redis_client, tmp_path, redis_server)
    publish()
    assert findings_on_demand(env) == EXPECTED
    assert findings_continuous(env, database_url) == EXPECTED

    # The same changes delivered again change nothing and duplicate nothing.
    publish()
    assert findings_continuous(env, database_url) == EXPECTED


def test_a_review_table_ends_with_totals_per_institution_and_action(
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    settle(start_gatekeeper, redis_server, tmp_path, database_url)
    publish_by_apply(redis_client, tmp_path, redis_server)()
    now = int(time.time())
    env = os.environ | {"REDIS_URL": redis_server.url, "DATABASE_URL": database_url}
    result = subprocess.run(
        [str(BIN / "gatekeeper"), "review", "--since", format_cst(now - 3600), "--until", format_cst(now + 3600)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    totals = result.stdout.split("\n\n")[1].splitlines()
    assert totals[0].split() == ["fixmedins_code", "action", "items", "amount"]
    assert totals[2].split() == [INSTITUTION, "recover", "1", "10.00"]
    assert totals[3].split() == [INSTITUTION, "resettle", "2", "100.00"]


def test_reviewing_one_practitioner_uses_the_index_not_a_scan(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE decision_items_20261120 PARTITION OF decision_items"
            " FOR VALUES FROM ('2026-11-20 00:00:00+08') TO ('2026-11-21 00:00:00+08')"
        )
        connection.execute(
            "INSERT INTO decision_items SELECT '2026-11-20 10:00:00+08', 'd' || n, 0, 'H41130200746', 'c' || n,"
            " '1', '2026-11-20 09:00:00+08', 100, false, 'D41010200' || lpad((n % 5000)::text, 4, '0'),"
            " NULL, 'ALLOW', 'OK', '', true FROM generate_series(1, 50000) AS n"
        )
        connection.execute("ANALYZE decision_items")
        plan = "\n".join(
            row[0]
            for row in connection.execute(
                "EXPLAIN SELECT * FROM decision_items WHERE bilg_dr_codg = %s"
                " UNION ALL SELECT * FROM decision_items WHERE orders_dr_code = %s",
                ["D410102000042", "D410102000042"],
            ).fetchall()
        )
    assert "Seq Scan" not in plan, plan
    assert "decision_items_20261120_bilg_dr_codg_fee_ocur_time_idx" in plan, plan
