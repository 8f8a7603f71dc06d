"""Change files against a real Redis: any order, any number of times, broken lines quarantined."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.records import Status
from gatekeeper.core.rules import Reason, standing_at
from loader.cache import NoSnapshot, read_state
from loader.changes import ApplyResult, apply_change_files
from loader.quarantine import Quarantine
from tests.integration.conftest import on_both_redis
from tests.integration.registry import (
    expected_records,
    lookup,
    period,
    stored_records,
    write_changes,
    write_snapshot,
)
from tests.servers import RedisServer

pytestmark = on_both_redis  # the core cases run against one Redis and the Redis Cluster

MAY = "2026-05-01 00:00:00"
A1, A2, A3, A4 = (f"D1101050001{n:02d}" for n in range(1, 5))  # in the snapshot
N1, N2 = "D110105000201", "D110105000202"  # new in the change feed
WATERMARK = 5

SNAPSHOT = [
    period(A1, "r-101", 1, "2020-01-01 00:00:00", seq=1),
    period(A2, "r-102", 1, "2020-01-01 00:00:00", seq=2),
    period(A3, "r-103", 1, "2020-01-01 00:00:00", seq=3),
    period(A3, "s-103", 2, "2026-01-01 00:00:00", "2026-09-01 00:00:00", seq=4, chg_rea="暂停8个月"),
    period(A4, "r-104", 1, "2020-01-01 00:00:00", seq=5),
]
CHANGES = [
    period(A1, "s-101", 2, "2026-04-01 00:00:00", "2026-10-01 00:00:00", seq=10, chg_rea="暂停"),
    period(A2, "s-102", 2, "2026-04-01 00:00:00", "2026-06-01 00:00:00", seq=11, chg_rea="暂停"),
    period(N1, "r-201", 1, "2026-01-01 00:00:00", seq=12),
    period(A3, "s-103", 2, "2026-01-01 00:00:00", "2026-03-01 00:00:00", seq=13, chg_rea="缩短"),
    period(A1, "s-101", 2, "2026-04-01 00:00:00", "2026-10-01 00:00:00", seq=14, chg_rea="申诉成功", vali_flag=0),
    period(A2, "s-102", 2, "2026-04-01 00:00:00", "2026-12-01 00:00:00", seq=15, chg_rea="延长"),
    period(N1, "s-201", 2, "2026-04-15 00:00:00", "2026-08-01 00:00:00", seq=16, chg_rea="暂停"),
    period(N2, "r-202", 1, "2015-01-01 00:00:00", "2024-01-01 00:00:00", seq=17),
    period(N2, "t-202", 3, "2024-01-01 00:00:00", ban_endtime="2027-01-01 00:00:00", seq=18, chg_rea="终止"),
    period(A4, "s-104", 2, "2026-04-01 00:00:00", "2026-05-15 00:00:00", seq=19, chg_rea="暂停"),
    period(A4, "s-104", 2, "2026-04-01 00:00:00", "2026-05-15 00:00:00", seq=20, chg_rea="撤销", vali_flag=0),
    period(N1, "s-201", 2, "2026-04-15 00:00:00", "2026-04-20 00:00:00", seq=21, chg_rea="缩短"),
]
CODES = [A1, A2, A3, A4, N1, N2]


def by_seq(first: int, last: int) -> list[dict[str, str]]:
    return [change for change in CHANGES if first <= int(change["seq"]) <= last]


@pytest.fixture
def change_files(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "feed"
    directory.mkdir()
    return {
        "first": write_changes(directory / "changes-10-13.jsonl", by_seq(10, 13)),
        "second": write_changes(directory / "changes-14-17.jsonl", by_seq(14, 17)),
        "third": write_changes(directory / "changes-18-21.jsonl", by_seq(18, 21)),
        "overlapping": write_changes(directory / "changes-12-16.jsonl", by_seq(12, 16)),
        # One file whose lines are in reverse seq order, as a careless redelivery might be.
        "reversed": write_changes(directory / "redelivery.jsonl", list(reversed(CHANGES))),
    }


def load_base(client: redis.Redis, directory: Path) -> None:
    """A fresh cache holding only the base snapshot."""
    from loader.snapshot import load_snapshot

    client.flushall()
    load_snapshot(client, write_snapshot(directory, SNAPSHOT, snapshot_id="base", watermark_seq=WATERMARK))


def apply(client: redis.Redis, paths: Iterable[Path], report: Path) -> ApplyResult:
    quarantine = Quarantine(report)
    try:
        return apply_change_files(client, list(paths), quarantine)
    finally:
        quarantine.close()


def logged_changes(client: redis.Redis) -> list[tuple[int, str]]:
    """(seq, code) of every change in gk:changes, read raw: an entry may repeat its fields."""
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("XRANGE", keys.CHANGES, "-", "+")
        entries = connection.read_response()
    finally:
        client.connection_pool.release(connection)
    logged: list[tuple[int, str]] = []
    for _, fields in entries:
        seq = None
        for name, value in zip(fields[::2], fields[1::2], strict=True):
            if name == b"seq":
                seq = int(value)
            elif name == b"code":
                assert seq is not None
                logged.append((seq, value.decode()))
    return logged


def test_out_of_order_and_duplicated_files_give_the_cache_of_one_in_order_pass(
    redis_client: redis.Redis, redis_server: RedisServer, change_files: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "q.jsonl"
    load_base(redis_client, tmp_path)
    for name in ("first", "second", "third"):
        apply(redis_client, [change_files[name]], report)
    in_order = stored_records(redis_server.url, CODES)
    assert in_order == expected_records(SNAPSHOT, CHANGES, watermark_seq=WATERMARK)
    assert read_state(redis_client).applied_seq == 21

    load_base(redis_client, tmp_path)
    assert stored_records(redis_server.url, CODES) != in_order  # the reload really started over
    deliveries = [
        ["third"],
        ["second", "first", "third"],  # one run, a file delivered twice
        ["overlapping"],
        ["first"],
        ["reversed"],
        ["second"],
    ]
    for delivery in deliveries:
        result = apply(redis_client, [change_files[name] for name in delivery], report)
        assert result.bad_rows == 0
    assert stored_records(redis_server.url, CODES) == in_order
    assert read_state(redis_client).applied_seq == 21
    logged = logged_changes(redis_client)
    assert len(logged) == len(set(logged))  # nothing was applied twice

    # What the registry says, decided: withdrawn, extended, shortened, new, terminated.
    records = lookup(redis_server.url, CODES).records
    at = parse_cst(MAY)
    assert standing_at(records[A1], at).reason == Reason.OK  # suspension withdrawn
    assert standing_at(records[A2], parse_cst("2026-07-01 00:00:00")).reason == Reason.SUSPENDED  # extended
    assert standing_at(records[A3], at).reason == Reason.OK  # shortened to March
    assert standing_at(records[A4], at).reason == Reason.OK  # withdrawn
    assert standing_at(records[N1], parse_cst("2026-04-18 00:00:00")).reason == Reason.SUSPENDED
    assert standing_at(records[N1], at).reason == Reason.OK  # shortened to 20 April
    assert standing_at(records[N2], at).reason == Reason.TERMINATED


def test_a_change_not_newer_than_what_is_applied_for_its_chg_id_is_skipped(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load_base(redis_client, tmp_path)
    suspension = period(A1, "s-101", 2, "2026-04-01 00:00:00", "2026-10-01 00:00:00", seq=10, chg_rea="暂停")
    withdrawal = {**suspension, "vali_flag": "0", "chg_rea": "申诉成功", "seq": "20"}
    report = tmp_path / "q.jsonl"
    assert apply(redis_client, [write_changes(tmp_path / "w.jsonl", [withdrawal])], report).stats.applied == 1

    # The original suspension (seq 10) and the withdrawal itself arrive again.
    late = apply(redis_client, [write_changes(tmp_path / "late.jsonl", [suspension, withdrawal])], report)
    assert (late.stats.applied, late.stats.stale) == (0, 2)
    record = lookup(redis_server.url, [A1]).records[A1]
    (withdrawn,) = [p for p in record.periods if p.chg_id == "s-101"]
    assert (withdrawn.status, withdrawn.seq) == (Status.WITHDRAWN, 20)
    assert standing_at(record, parse_cst(MAY)).reason == Reason.OK
    assert read_state(redis_client).applied_seq == 20
    assert logged_changes(redis_client) == [(20, A1)]

    # A change at or below the snapshot's watermark is already in the snapshot.
    old = period(A4, "s-old", 2, "2026-01-01 00:00:00", seq=WATERMARK, chg_rea="旧")
    result = apply(redis_client, [write_changes(tmp_path / "old.jsonl", [old])], report)
    assert (result.stats.applied, result.stats.stale) == (0, 1)
    assert standing_at(lookup(redis_server.url, [A4]).records[A4], parse_cst(MAY)).reason == Reason.OK


def test_malformed_change_lines_are_quarantined_and_the_rest_applied(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load_base(redis_client, tmp_path)

    def line(code: str, number: int, **overrides: object) -> str:
        change: dict[str, object] = {**period(code, f"c-{number}", 1, "2026-01-01 00:00:00", seq=number)}
        change.update({"seq": number, **overrides})
        return json.dumps({k: v for k, v in change.items() if v is not None}, ensure_ascii=False)

    good = ["D110105000301", "D110105000308"]
    lines = [
        "\ufeff" + line(good[0], 30) + "\r\n",  # 1: a BOM and a CRLF line end
        '{"prac_psn_code": "D110105000302", "prac_psn_type": "1"\n',  # 2: bad JSON
        "\n",  # 3: blank
        line("D110105000304", 32, seq=None) + "\n",  # 4: no seq
        "[1, 2, 3]\n",  # 5: not an object
        line("D1101050003", 33) + "\n",  # 6: malformed code
        line("D110105000306", 34, begntime="2026-02-30 00:00:00") + "\n",  # 7: no such day
        line(good[1], 35) + "\n",  # 8
        line("D110105000309", 36)[:60],  # 9: truncated, no line end
    ]
    path = tmp_path / "changes-30-36.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    report = tmp_path / "q.jsonl"
    result = apply(redis_client, [path], report)

    assert (result.stats.applied, result.bad_rows) == (2, 6)
    quarantined = [json.loads(entry) for entry in report.read_text(encoding="utf-8").splitlines()]
    assert [(entry["file"], entry["line"]) for entry in quarantined] == [(str(path), n) for n in (2, 4, 5, 6, 7, 9)]
    reasons = [entry["reason"] for entry in quarantined]
    for reason, word in zip(reasons, ["JSON", "seq", "object", "prac_psn_code", "begntime", "JSON"], strict=True):
        assert word in reason, (word, reason)
    found = lookup(redis_server.url, [f"D1101050003{n:02d}" for n in range(1, 10)]).records
    assert sorted(found) == good


def test_changes_before_any_snapshot_are_refused(
    redis_client: redis.Redis, change_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(NoSnapshot):
        apply(redis_client, [change_files["first"]], tmp_path / "q.jsonl")
    assert redis_client.keys("{gk}:*") == []  # nothing was written, not even to the change log


def test_applied_seq_advances_and_every_applied_change_is_logged_once(
    redis_client: redis.Redis, redis_server: RedisServer, change_files: dict[str, Path], tmp_path: Path
) -> None:
    load_base(redis_client, tmp_path)
    report = tmp_path / "q.jsonl"
    for name, last in (("first", 13), ("second", 17), ("third", 21)):
        result = apply(redis_client, [change_files[name]], report)
        assert result.stats.applied == 4
        assert read_state(redis_client).applied_seq == last
        assert lookup(redis_server.url, [A1]).registry_version == f"base@{last}"
    expected = [(int(change["seq"]), change["prac_psn_code"]) for change in CHANGES]
    assert logged_changes(redis_client) == expected

    again = apply(redis_client, change_files.values(), report)
    assert (again.stats.applied, again.stats.stale) == (0, 4 * 3 + 5 + len(CHANGES))
    assert logged_changes(redis_client) == expected
    assert read_state(redis_client).applied_seq == 21  # an older file does not move it back


def test_the_practitioner_type_does_not_depend_on_delivery_order(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load_base(redis_client, tmp_path)
    newer = period(A1, "s-a", 2, "2026-01-01 00:00:00", "2026-02-01 00:00:00", seq=30, prac_psn_type=2)
    older = period(A1, "s-b", 2, "2026-03-01 00:00:00", "2026-04-01 00:00:00", seq=20, prac_psn_type=1)
    report = tmp_path / "q.jsonl"
    apply(redis_client, [write_changes(tmp_path / "newer.jsonl", [newer])], report)
    apply(redis_client, [write_changes(tmp_path / "older.jsonl", [older])], report)  # delivered late
    assert lookup(redis_server.url, [A1]).records[A1].prac_psn_type == 2  # as in seq order
