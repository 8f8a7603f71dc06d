"""Registry data at and past the loader's limits (README, "Limits"): a reason text is cut to
MAX_CHG_REA_LENGTH and reported; a stored record never makes a response larger than that;
a practitioner's periods are capped and no Redis call the loader makes blocks Redis long."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import redis

from gatekeeper.cache import keys
from gatekeeper.core.records import MAX_CHG_REA_LENGTH, PractitionerRecord, StatusPeriod, encode_record
from gatekeeper.core.wording import MAX_TEMPLATE_LENGTH
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.cache import MAX_PERIODS, read_state
from loader.changes import apply_change_files
from loader.quarantine import Quarantine
from loader.snapshot import SnapshotOptions, load_snapshot
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import load, lookup, period, write_changes, write_snapshot
from tests.servers import RedisServer

CODE = "D510105000123"
REGISTERED = period(CODE, "reg-1", 1, "2020-01-01 00:00:00", seq=1)


def suspension(seq: int, chg_rea: str, chg_id: str = "susp-1") -> dict[str, str]:
    return period(CODE, chg_id, 2, "2026-11-01 00:00:00", "2026-12-01 00:00:00", seq=seq, chg_rea=chg_rea)


def quarantined(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_megabyte_reason_in_a_change_is_cut_and_reported_and_the_period_still_applied(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, write_snapshot(tmp_path, [REGISTERED]))
    changes = write_changes(
        tmp_path / "changes-2-3.jsonl", [suspension(2, "违" * 1_000_000), suspension(3, "ok", "s2")]
    )
    report = tmp_path / "q.jsonl"
    quarantine = Quarantine(report)
    try:
        result = apply_change_files(redis_client, [changes], quarantine)
    finally:
        quarantine.close()
    assert (result.stats.applied, result.bad_rows) == (2, 0)  # a cut reason is not a bad row
    stored = lookup(redis_server.url, [CODE]).records[CODE]
    reasons = sorted(p.chg_rea for p in stored.periods if p.status == 2)
    assert reasons == ["ok", "违" * MAX_CHG_REA_LENGTH]
    (entry,) = quarantined(report)
    assert entry["line"] == 1
    assert f"chg_rea has 1,000,000 characters, more than {MAX_CHG_REA_LENGTH}" in str(entry["reason"])


def test_a_long_reason_in_a_snapshot_is_cut_and_reported_without_counting_as_bad(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path, [REGISTERED, suspension(2, "x" * 100_000)])
    report = tmp_path / "q.jsonl"
    result = load_snapshot(redis_client, snapshot, SnapshotOptions(quarantine=report))
    assert (result.bad_rows, result.truncated_rows, result.quarantine) == (0, 1, report)
    (entry,) = quarantined(report)
    assert entry["line"] == 3 and "chg_rea" in str(entry["reason"])
    stored = lookup(redis_server.url, [CODE]).records[CODE]
    assert max(len(p.chg_rea) for p in stored.periods) == MAX_CHG_REA_LENGTH


def store_directly(client: redis.Redis, record: PractitionerRecord) -> None:
    """Write a record the way no current loader would (an older one, or a hand edit)."""
    state = read_state(client)
    assert state.generation is not None
    client.hset(keys.bucket_key(state.generation, keys.bucket_of(CODE, state.buckets)), CODE, encode_record(record))


def test_a_stored_record_with_a_huge_reason_never_blows_up_a_response(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, write_snapshot(tmp_path, [REGISTERED]))
    huge = StatusPeriod(
        status=2, begntime=1_700_000_000, chg_id="c7", seq=2, endtime=2_000_000_000, chg_rea="违" * 100_000
    )
    store_directly(redis_client, PractitionerRecord(1, (huge,)))
    # Started after the record was written behind the loader's back (no change notification
    # tells a running worker of it): the worker reads it, warming included.
    gatekeeper = start_gatekeeper()
    items = 200
    request = pb.CheckClaimRequest(
        claim_id="BIG-1",
        fixmedins_code="H41010200001",
        items=[
            pb.LineItem(feedetl_sn=str(n), fee_ocur_time="2026-11-08 10:00:00", amount_fen=100, bilg_dr_codg=CODE)
            for n in range(items)
        ],
    )
    response = gatekeeper.stub.CheckClaim(request, timeout=30)
    assert all(len(item.chg_rea) == MAX_CHG_REA_LENGTH for item in response.items)
    # Per item: the cut reason, the cashier's message (a template's length and its filled
    # code and window), and 200 bytes for the rest; UTF-8 takes 3 bytes a character.
    assert response.ByteSize() < items * (3 * MAX_CHG_REA_LENGTH + 3 * MAX_TEMPLATE_LENGTH + 200)

    practitioner = gatekeeper.stub.GetPractitioner(
        pb.GetPractitionerRequest(prac_psn_code=CODE, at_time="2026-11-08 10:00:00"), timeout=10
    )
    assert len(practitioner.current.chg_rea) == MAX_CHG_REA_LENGTH


# --- a practitioner with very many periods ---------------------------------------------------

SLOW_MICROSECONDS = 50_000  # "a few milliseconds" with room for a busy shared machine
MANY = 600


def many_periods(count: int, first_seq: int) -> list[dict[str, str]]:
    """Alternating terminations (with a ban) and registrations of CODE, each with a long reason."""
    rows = []
    for n in range(count):
        year, month = 1980 + n // 12, 1 + n % 12
        begins = f"{year}-{month:02d}-01 00:00:00"
        ends = f"{year}-{month:02d}-15 00:00:00"
        if n % 2:
            rows.append(
                period(CODE, f"t{n}", 3, begins, ends, seq=first_seq + n, chg_rea="终止" * 100, ban_endtime=ends)
            )
        else:
            rows.append(period(CODE, f"r{n}", 1, begins, ends, seq=first_seq + n))
    return rows


def slow_calls(client: redis.Redis) -> list[tuple[int, str]]:
    """(microseconds, command) of every call the slow log caught since the last reset."""
    return [(entry["duration"], str(entry["command"])[:80]) for entry in client.slowlog_get(128)]


def watch_slow_calls(client: redis.Redis) -> None:
    client.config_set("slowlog-log-slower-than", SLOW_MICROSECONDS)
    client.slowlog_reset()


def test_a_snapshot_practitioner_with_very_many_periods_never_blocks_redis(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    others = [period(f"D5101050{n:05d}", "r", 1, "2020-01-01 00:00:00", seq=1) for n in range(1, 50)]
    snapshot = write_snapshot(tmp_path, [*others, *many_periods(MANY, first_seq=10)])
    report = tmp_path / "q.jsonl"
    watch_slow_calls(redis_client)
    result = load_snapshot(redis_client, snapshot, SnapshotOptions(quarantine=report, force=True))
    assert slow_calls(redis_client) == []
    stored = lookup(redis_server.url, [CODE]).records[CODE]
    assert len(stored.periods) == MAX_PERIODS
    refused = quarantined(report)
    assert len(refused) == MANY - MAX_PERIODS == result.bad_rows
    assert all(f"more than {MAX_PERIODS} periods" in str(entry["reason"]) for entry in refused)
    assert sorted(int(str(entry["line"])) for entry in refused)[0] > 1 + len(others) + MAX_PERIODS - 1


def test_changes_piling_periods_on_one_practitioner_never_block_redis(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, write_snapshot(tmp_path, [REGISTERED]))
    changes = write_changes(tmp_path / "changes.jsonl", many_periods(MANY, first_seq=10))
    report = tmp_path / "q.jsonl"
    quarantine = Quarantine(report)
    watch_slow_calls(redis_client)
    try:
        result = apply_change_files(redis_client, [changes], quarantine)
    finally:
        quarantine.close()
    assert slow_calls(redis_client) == []
    assert result.stats.applied == MAX_PERIODS - 1  # REGISTERED is one of them
    assert result.bad_rows == result.stats.refused == MANY - MAX_PERIODS + 1
    # Which periods are kept depends on the order they reach Redis (as with files delivered
    # out of order): each refused one is reported once, with its line.
    lines = [int(str(entry["line"])) for entry in quarantined(report)]
    assert len(set(lines)) == len(lines) and set(lines) <= set(range(1, MANY + 1))
    assert len(lookup(redis_server.url, [CODE]).records[CODE].periods) == MAX_PERIODS


# --- the period cap and the call budget with the chg_id index (issue 9 meets issue 10) --------

OTHER = "D510105000456"


def moving(code: str, seq: int) -> dict[str, str]:
    """Versions of one suspension whose chg_id moves between practitioners."""
    return period(code, "moving", 2, "2026-11-01 00:00:00", "2026-12-01 00:00:00", seq=seq, chg_rea="停")


def function_calls(client: redis.Redis) -> int:
    """How many FCALLs the server has run."""
    return int(cast(dict[str, Any], client.info("commandstats"))["cmdstat_fcall"]["calls"])


def index_entries(client: redis.Redis) -> int:
    """How many chg_ids the current generation's chg_id index holds."""
    state = read_state(client)
    assert state.generation is not None
    pieces = range(keys.index_pieces(state.buckets))
    held = sum(int(client.strlen(keys.chg_index_key(state.generation, n))) for n in pieces)
    return held // keys.INDEX_ENTRY_BYTES


def test_a_change_moving_a_period_to_a_full_practitioner_is_refused_and_moves_nothing(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, write_snapshot(tmp_path, [*many_periods(MAX_PERIODS, first_seq=10), moving(OTHER, 200)]))
    changes = write_changes(tmp_path / "changes.jsonl", [moving(CODE, 300)])
    report = tmp_path / "q.jsonl"
    quarantine = Quarantine(report)
    try:
        result = apply_change_files(redis_client, [changes], quarantine)
    finally:
        quarantine.close()
    assert (result.stats.applied, result.stats.refused, result.bad_rows) == (0, 1, 1)
    (entry,) = quarantined(report)
    assert f"prac_psn_code {CODE} would have more than {MAX_PERIODS} periods" in str(entry["reason"])
    records = lookup(redis_server.url, [CODE, OTHER]).records
    assert len(records[CODE].periods) == MAX_PERIODS
    assert [p.seq for p in records[OTHER].periods] == [200]  # still with its old code
    assert index_entries(redis_client) == MAX_PERIODS + 1
    # The index still says OTHER holds it at seq 200: a newer version for OTHER replaces it.
    with_report = Quarantine(tmp_path / "q-2.jsonl")
    try:
        apply_change_files(
            redis_client, [write_changes(tmp_path / "changes-2.jsonl", [moving(OTHER, 400)])], with_report
        )
    finally:
        with_report.close()
    assert [p.seq for p in lookup(redis_server.url, [OTHER]).records[OTHER].periods] == [400]


def test_a_snapshot_row_moving_a_period_to_a_full_practitioner_is_refused_and_the_index_left_alone(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rows = [
        moving(OTHER, 200),
        *many_periods(MAX_PERIODS, first_seq=10),
        moving(CODE, 300),
        period(CODE, "new", 1, "2027-01-01 00:00:00", seq=301),
    ]
    report = tmp_path / "q.jsonl"
    result = load_snapshot(redis_client, write_snapshot(tmp_path, rows), SnapshotOptions(quarantine=report, force=True))
    assert result.bad_rows == 2
    records = lookup(redis_server.url, [CODE, OTHER]).records
    assert len(records[CODE].periods) == MAX_PERIODS
    assert [p.seq for p in records[OTHER].periods] == [200]
    assert index_entries(redis_client) == MAX_PERIODS + 1  # neither refused row left an entry


def test_moves_between_two_large_records_are_handled_across_budgeted_calls(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Two practitioners with records of ~60 KB each: every move reads both, so one gk_apply
    # call handles a few moves and hands the rest back.
    big = [*many_periods(MAX_PERIODS - 2, first_seq=10)]
    big += [{**row, "prac_psn_code": OTHER, "chg_id": "o" + row["chg_id"]} for row in big]
    load(redis_client, write_snapshot(tmp_path, [*big, moving(OTHER, 500)], watermark_seq=500))
    versions = [moving(CODE if n % 2 == 0 else OTHER, 501 + n) for n in range(41)]  # ends with CODE
    quarantine = Quarantine(tmp_path / "q.jsonl")
    watch_slow_calls(redis_client)
    calls_before = function_calls(redis_client)
    try:
        result = apply_change_files(redis_client, [write_changes(tmp_path / "changes.jsonl", versions)], quarantine)
    finally:
        quarantine.close()
    assert function_calls(redis_client) - calls_before > 3  # the batch came back for lack of budget
    assert slow_calls(redis_client) == []
    assert (result.stats.applied, result.stats.refused) == (41, 0)
    records = lookup(redis_server.url, [CODE, OTHER]).records
    assert len(records[CODE].periods) == MAX_PERIODS - 1
    assert len(records[OTHER].periods) == MAX_PERIODS - 2
    assert max(p.seq for p in records[CODE].periods) == 541
