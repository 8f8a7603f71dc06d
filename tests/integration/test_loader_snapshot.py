"""Snapshot loads against a real Redis: broken exports survive, bad snapshots are refused,
changes applied around a load are not lost, and one load at a time."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

import loader.cache
from gatekeeper.cache import keys
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.rules import Reason, standing_at
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.cache import ApplyStats, ChangeApplier, LoaderBusy, read_lease, read_state
from loader.changes import apply_change_files
from loader.generate import generate
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import FIELDS, encode_change
from loader.snapshot import SnapshotOptions, SnapshotRefused, SnapshotResult, load_snapshot
from tests.integration.conftest import StartGatekeeper, on_both_redis
from tests.integration.registry import (
    expected_records,
    lookup,
    period,
    read_changes,
    snapshot_rows,
    stored_records,
    write_changes,
    write_manifest,
    write_snapshot,
)
from tests.servers import RedisServer

pytestmark = on_both_redis  # the core cases run against one Redis and the Redis Cluster

MAY = "2026-05-01 00:00:00"  # when the tests decide: inside every suspension below
HEADER = ",".join(FIELDS)


def standing(redis_url: str, code: str, moment: str = MAY) -> Reason:
    record = lookup(redis_url, [code]).records.get(code)
    return standing_at(record, parse_cst(moment)).reason


def generation_keys(client: redis.Redis) -> set[int]:
    """The generations that still have keys in Redis."""
    return {int(key.split(b":")[1][1:]) for key in client.scan_iter(match=keys.PREFIX + ":g[0-9]*:*", count=1000)}


# --- every malformed input of REGISTRY_FORMAT.md, in one file written byte by byte -------


@dataclass(frozen=True)
class Line:
    """One record of the malformed export: its bytes (without the line end) and, for a
    bad one, a word the quarantine reason must contain."""

    case: str
    text: str
    bad: str = ""
    end: str = "\r\n"


GOOD_ROWS = [
    Line("registered", "D110105000001,1,c-reg,1,2020-01-01 00:00:00,,,首次注册,1,1"),
    Line(
        "trailing_whitespace",
        "D110105000002 ,1 ,c-sus ,2 ,2026-01-01 00:00:00 ,2026-07-01 00:00:00 , , 暂停1个月 ,1 ,2 ",
    ),
    Line(
        "reason_with_comma_quotes_and_newline",
        'D110105000003,1,c-quoted,2,2026-01-01 00:00:00,2026-07-01 00:00:00,,"串换药品, ""挂床住院""\n第二行",1,3',
    ),
    # The same chg_id twice: the higher seq wins whichever comes first.
    Line("duplicate_higher_seq_first", "D110105000004,1,c-dup-a,2,2026-01-01 00:00:00,2026-07-01 00:00:00,,later,1,20"),
    Line(
        "duplicate_lower_seq_after", "D110105000004,1,c-dup-a,2,2026-01-01 00:00:00,2026-03-01 00:00:00,,earlier,1,10"
    ),
    Line(
        "duplicate_lower_seq_first", "D110105000005,1,c-dup-b,2,2026-01-01 00:00:00,2026-03-01 00:00:00,,earlier,1,11"
    ),
    Line("duplicate_higher_seq_after", "D110105000005,1,c-dup-b,2,2026-01-01 00:00:00,2026-07-01 00:00:00,,later,1,21"),
    Line("lf_line_end_among_crlf", "D110105000006,2,c-lf,1,2020-01-01 00:00:00,,,,1,22", end="\n"),
]
BAD_ROWS = [
    Line("code_too_short", "D11010500007,1,c7,1,2020-01-01 00:00:00,,,,1,30", bad="prac_psn_code"),
    Line("code_unknown_province", "D990105000008,1,c8,1,2020-01-01 00:00:00,,,,1,31", bad="prac_psn_code"),
    Line("begntime_no_such_month", "D110105000009,1,c9,1,2020-13-01 00:00:00,,,,1,32", bad="begntime"),
    Line("begntime_slashes", "D110105000010,1,c10,1,2020/01/01 00:00:00,,,,1,33", bad="begntime"),
    Line("ban_endtime_date_only", "D110105000011,1,c11,3,2024-01-01 00:00:00,,2027-01-01,,1,34", bad="ban_endtime"),
    Line(
        "endtime_before_begntime",
        "D110105000012,1,c12,2,2026-07-01 00:00:00,2026-01-01 00:00:00,,x,1,35",
        bad="endtime",
    ),
    Line("unknown_status", "D110105000013,1,c13,4,2020-01-01 00:00:00,,,,1,36", bad="status"),
    Line("missing_column", "D110105000014,1,c14,1,2020-01-01 00:00:00,,,,1", bad="columns"),
    Line("extra_column", "D110105000015,1,c15,1,2020-01-01 00:00:00,,,,1,38,surplus", bad="columns"),
]
# The export was cut inside a quoted reason: the open quote runs to the end of the file.
TRUNCATED = Line(
    "truncated_last_line", 'D110105000016,1,c16,2,2026-01-01 00:00:00,2026-07-01 00:00:00,,"违规', bad="columns", end=""
)


# Good and bad rows alternate; the truncated line comes last.
ROWS = [line for pair in itertools.zip_longest(GOOD_ROWS, BAD_ROWS) for line in pair if line is not None]


def malformed_export(directory: Path) -> tuple[Path, dict[str, int]]:
    """The export, and the physical line each case starts on (the header is line 1)."""
    parts = ["\ufeff" + HEADER + "\r\n", "\r\n"]  # a BOM, then a blank line
    lines: dict[str, int] = {}
    for number, line in enumerate([*ROWS, TRUNCATED]):
        if number == 5:
            parts.append("   \r\n")  # a line of blanks is a blank line too
        lines[line.case] = 1 + sum(part.count("\n") for part in parts)
        parts.append(line.text + line.end)
    path = directory / "malformed.csv"
    path.write_bytes("".join(parts).encode("utf-8"))
    write_manifest(path, row_count=len(ROWS) + 1, watermark_seq=40, snapshot_id="malformed")
    return path, lines


@pytest.mark.parametrize("parsers", ["in-process", "worker-processes"])
def test_every_malformed_input_is_quarantined_and_the_good_rows_load(
    redis_client: redis.Redis,
    redis_server: RedisServer,
    start_gatekeeper: StartGatekeeper,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parsers: str,
) -> None:
    if parsers == "worker-processes":
        # As a large snapshot is loaded: parsed by workers, in pieces cut at line ends
        # (64 bytes: every record in a piece of its own, the quoted newline kept whole).
        monkeypatch.setattr("loader.snapshot.PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr("loader.snapshot.PARSERS", 2)
        monkeypatch.setattr("loader.chunks.CHUNK_BYTES", 64)
    path, lines = malformed_export(tmp_path)
    report = tmp_path / "quarantine.jsonl"
    result = load_snapshot(redis_client, path, SnapshotOptions(max_bad_share=0.9, quarantine=report))

    # Row count and checksum (of the bytes as delivered, BOM and all) matched the manifest.
    assert result.problems == []
    assert (result.rows, result.bad_rows) == (len(GOOD_ROWS) + len(BAD_ROWS) + 1, len(BAD_ROWS) + 1)
    assert result.practitioners == 6
    assert read_state(redis_client).snapshot_id == "malformed"

    quarantined = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert sorted(entry["line"] for entry in quarantined) == sorted(lines[line.case] for line in [*BAD_ROWS, TRUNCATED])
    by_line = {entry["line"]: entry for entry in quarantined}
    for line in [*BAD_ROWS, TRUNCATED]:
        entry = by_line[lines[line.case]]
        assert entry["file"] == str(path), line.case
        assert line.bad in entry["reason"], (line.case, entry["reason"])

    url = redis_server.url
    bad_codes = [line.text.split(",")[0] for line in [*BAD_ROWS, TRUNCATED]]
    assert lookup(url, bad_codes).records == {}  # not one bad row was applied
    assert standing(url, "D110105000001") == Reason.OK
    assert standing(url, "D110105000006") == Reason.OK
    records = lookup(url, [f"D11010500000{n}" for n in range(2, 6)]).records
    trimmed = records["D110105000002"]
    assert standing_at(trimmed, parse_cst(MAY)).reason == Reason.SUSPENDED
    assert trimmed.periods[0].chg_id == "c-sus"  # the chg_id was trimmed
    assert trimmed.periods[0].chg_rea.strip() == "暂停1个月"
    quoted = standing_at(records["D110105000003"], parse_cst(MAY))
    assert quoted.reason == Reason.SUSPENDED
    assert quoted.window is not None and quoted.window.chg_rea == '串换药品, "挂床住院"\n第二行'
    for code in ("D110105000004", "D110105000005"):  # one period each: the seq-20/21 version
        (kept,) = records[code].periods
        assert (kept.chg_rea, kept.endtime) == ("later", parse_cst("2026-07-01 00:00:00")), code
        assert standing_at(records[code], parse_cst("2026-05-01 00:00:00")).reason == Reason.SUSPENDED

    # And a real gatekeeper decides a claim on them accordingly.
    gatekeeper = start_gatekeeper()
    claim = pb.CheckClaimRequest(
        claim_id="malformed",
        fixmedins_code="H11010500001",
        items=[
            pb.LineItem(feedetl_sn=str(n), fee_ocur_time=MAY, bilg_dr_codg=code, amount_fen=100)
            for n, code in enumerate(["D110105000001", "D110105000003", "D110105000004", "D110105000009"])
        ],
    )
    response = gatekeeper.stub.CheckClaim(claim, timeout=5)
    assert response.registry_version == "malformed@40"
    assert [(item.verdict, item.reason) for item in response.items] == [
        (pb.VERDICT_ALLOW, pb.REASON_OK),
        (pb.VERDICT_BLOCK, pb.REASON_SUSPENDED),
        (pb.VERDICT_BLOCK, pb.REASON_SUSPENDED),
        (pb.VERDICT_BLOCK, pb.REASON_UNREGISTERED),  # its only row was bad
    ]
    assert response.items[1].chg_rea == '串换药品, "挂床住院"\n第二行'


def test_columns_may_come_in_any_order(redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    rows = [
        period("D110105000001", "r1", 1, "2020-01-01 00:00:00", seq=1),
        period("D110105000002", "s2", 2, "2026-01-01 00:00:00", "2026-07-01 00:00:00", seq=2, chg_rea="暂停"),
    ]
    path = write_snapshot(tmp_path, rows, fields=list(reversed(FIELDS)))
    result = load_snapshot(redis_client, path)
    assert (result.practitioners, result.bad_rows) == (2, 0)
    assert standing(redis_server.url, "D110105000001") == Reason.OK
    assert standing(redis_server.url, "D110105000002") == Reason.SUSPENDED


def test_a_bad_multi_line_record_is_reported_at_its_first_line(redis_client: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "multiline.csv"
    path.write_bytes(
        (
            HEADER + "\r\n"
            "D110105000001,1,c1,1,2020-01-01 00:00:00,,,,1,1\r\n"
            'D110105000002,1,c2,9,2026-01-01 00:00:00,,,"第一行\r\n第二行",1,2\r\n'  # lines 3-4, bad status
            "D110105000003,1,c3,1,2020-01-01 00:00:00,,,,1,3\r\n"
        ).encode()
    )
    write_manifest(path, row_count=3, watermark_seq=3)
    report = tmp_path / "q.jsonl"
    load_snapshot(redis_client, path, SnapshotOptions(force=True, quarantine=report))
    (entry,) = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert "status" in entry["reason"]
    assert entry["line"] == 3


def test_a_withdrawal_later_in_the_snapshot_beats_the_same_period_earlier(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Withdrawn rows are kept as tombstones, so their order in the file does not matter.
    code = "D110105000001"
    suspension = {"chg_rea": "记分9分"}
    rows = [
        period(code, "r", 1, "2020-01-01 00:00:00", seq=1),
        period(code, "w", 2, "2026-01-01 00:00:00", "2026-07-01 00:00:00", seq=2, **suspension),
        period(code, "w", 2, "2026-01-01 00:00:00", "2026-07-01 00:00:00", seq=3, vali_flag=0, **suspension),
    ]
    for order in (rows, rows[::-1]):
        redis_client.flushall()
        load_snapshot(redis_client, write_snapshot(tmp_path, order))
        record = lookup(redis_server.url, [code]).records[code]
        assert standing_at(record, parse_cst(MAY)).reason == Reason.OK
        withdrawn = [p for p in record.periods if p.chg_id == "w"]
        assert [(p.status, p.seq) for p in withdrawn] == [(0, 3)]


def test_a_load_says_how_many_rows_were_merged_and_where_its_time_went(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    code = "D110105000001"
    rows = [
        period(code, "r", 1, "2020-01-01 00:00:00", seq=1),
        period("D110105000002", "r2", 1, "2020-01-01 00:00:00", seq=2),
        period(code, "s", 2, "2026-01-01 00:00:00", "2026-07-01 00:00:00", seq=3, chg_rea="记分9分"),  # a second period
    ]
    result = load_snapshot(redis_client, write_snapshot(tmp_path, rows))
    assert (result.rows, result.practitioners, result.merge_rows) == (3, 2, 1)
    phases = (result.read_seconds, result.bulk_seconds, result.merge_seconds)
    assert min(phases) > 0 and sum(phases) <= result.seconds


# --- refusals: the previous snapshot stays, readers keep answering from it ----------------

PEOPLE = 1_000
SUBJECT = "D110105099999"  # registered in A; suspended in every B


def people(count: int, *, seq_base: int = 0) -> list[dict[str, str]]:
    """``count`` practitioners, the first of them SUBJECT."""
    rows = [period(SUBJECT, "subject", 1, "2020-01-01 00:00:00", seq=seq_base + 1)]
    rows += [
        period(f"D1101050{n:05d}", f"r{n}", 1, "2020-01-01 00:00:00", seq=seq_base + n + 2) for n in range(count - 1)
    ]
    return rows


def suspend_subject(seq: int) -> dict[str, str]:
    return period(SUBJECT, "subject-s", 2, "2026-01-01 00:00:00", "2026-07-01 00:00:00", seq=seq, chg_rea="暂停")


@pytest.fixture
def snapshot_a(redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> int:
    """Snapshot A (1,000 practitioners, watermark 1,000) is loaded; its generation."""
    result = load_snapshot(redis_client, write_snapshot(tmp_path, people(PEOPLE), snapshot_id="A", name="a.csv"))
    assert standing(redis_server.url, SUBJECT) == Reason.OK
    return result.generation


def snapshot_b(directory: Path, count: int = PEOPLE, *, bad: int = 0, name: str = "b.csv") -> Path:
    """Snapshot B: ``count`` practitioners (SUBJECT suspended), ``bad`` of them with a bad status."""
    rows = [*people(count, seq_base=2_000), suspend_subject(5_000)]
    for row in rows[1 : bad + 1]:
        row["status"] = "9"
    return write_snapshot(directory, rows, snapshot_id="B", name=name)


def b_with_manifest_row_count_off(directory: Path) -> Path:
    path = snapshot_b(directory)
    manifest = path.with_name(path.name + ".manifest.json")
    document = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**document, "row_count": document["row_count"] + 1}))
    return path


def b_with_checksum_off(directory: Path) -> Path:
    path = snapshot_b(directory)
    manifest = path.with_name(path.name + ".manifest.json")
    document = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**document, "sha256": hashlib.sha256(b"another file").hexdigest()}))
    return path


def b_cut_short(directory: Path) -> Path:
    """The registry's manifest, but the file lost its last 40 % in transfer."""
    path = snapshot_b(directory)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def b_gzip_cut_short(directory: Path) -> Path:
    plain = snapshot_b(directory)
    packed = directory / "b.csv.gz"
    data = gzip.compress(plain.read_bytes())
    manifest = json.loads(plain.with_name(plain.name + ".manifest.json").read_text())
    packed.write_bytes(data[: len(data) // 2])
    write_manifest(
        packed,
        row_count=manifest["row_count"],
        watermark_seq=manifest["watermark_seq"],
        snapshot_id="B",
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return packed


def b_header_only(directory: Path) -> Path:
    return write_snapshot(directory, [], snapshot_id="B", watermark_seq=5_000, name="b.csv")


REFUSALS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "manifest_row_count_mismatch": (b_with_manifest_row_count_off, "the manifest says"),
    "checksum_mismatch": (b_with_checksum_off, "checksum"),
    "bad_rows_over_1_percent": (lambda d: snapshot_b(d, bad=11), "11 of 1001 rows are bad"),
    "shrinks_by_over_5_percent": (lambda d: snapshot_b(d, 900), "900 practitioners would replace 1000"),
    "file_cut_short": (b_cut_short, "checksum"),
    "gzip_cut_short": (b_gzip_cut_short, "checksum"),
    "header_only": (b_header_only, "0 practitioners would replace 1000"),
}


def assert_still_on_a(client: redis.Redis, redis_url: str, generation_a: int) -> None:
    state = read_state(client)
    assert (state.snapshot_id, state.generation, state.record_count) == ("A", generation_a, PEOPLE)
    assert lookup(redis_url, [SUBJECT]).registry_version == "A@1000"
    assert standing(redis_url, SUBJECT) == Reason.OK
    assert client.exists(keys.LOADING) == 0  # the lease was released
    # The refused generation was dropped, not left for the next load to find.
    assert {int(g) for g in client.smembers(keys.GENERATIONS)} == {generation_a}
    assert generation_keys(client) == {generation_a}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_snapshot_failing_a_check_is_refused_and_readers_keep_the_previous_one(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path, case: str
) -> None:
    make, problem = REFUSALS[case]
    path = make(tmp_path)
    with pytest.raises(SnapshotRefused, match=problem):
        load_snapshot(redis_client, path)
    assert_still_on_a(redis_client, redis_server.url, snapshot_a)

    forced = load_snapshot(redis_client, path, SnapshotOptions(force=True))
    assert any(problem in text for text in forced.problems), forced.problems
    state = read_state(redis_client)
    assert (state.snapshot_id, state.generation) == ("B", forced.generation)
    assert lookup(redis_server.url, [SUBJECT]).registry_version.startswith("B@")
    assert generation_keys(redis_client) <= {forced.generation}  # A was dropped after the switch


def test_forcing_a_shrinking_snapshot_switches_to_it(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path
) -> None:
    result = load_snapshot(redis_client, snapshot_b(tmp_path, 900), SnapshotOptions(force=True))
    assert result.practitioners == 900
    assert read_state(redis_client).record_count == 900
    assert standing(redis_server.url, SUBJECT) == Reason.SUSPENDED
    assert lookup(redis_server.url, ["D110105000950"]).records == {}  # a snapshot is complete


def test_at_the_thresholds_a_snapshot_still_switches(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path
) -> None:
    # Exactly 1 % bad rows and exactly 5 % fewer practitioners: "more than" is not reached.
    rows = [*people(950, seq_base=2_000), suspend_subject(5_000)]
    rows += [period(f"D1101050{n:05d}", f"r{n}-b", 1, "2020-01-01 00:00:00", seq=6_000 + n) for n in range(39)]
    rows += [period(f"D1101060{n:05d}", f"bad{n}", 9, "2020-01-01 00:00:00", seq=7_000 + n) for n in range(10)]
    assert len(rows) == 1_000
    result = load_snapshot(redis_client, write_snapshot(tmp_path, rows, snapshot_id="B"))
    assert (result.practitioners, result.bad_rows, result.problems) == (950, 10, [])
    assert standing(redis_server.url, SUBJECT) == Reason.SUSPENDED


def test_a_snapshot_without_its_manifest_is_refused(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path
) -> None:
    path = snapshot_b(tmp_path)
    path.with_name(path.name + ".manifest.json").unlink()
    with pytest.raises(SnapshotRefused, match="manifest"):
        load_snapshot(redis_client, path)
    assert_still_on_a(redis_client, redis_server.url, snapshot_a)


def test_a_gz_file_that_is_not_gzip_is_refused_saying_so(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path
) -> None:
    path = tmp_path / "b.csv.gz"
    path.write_bytes(b"prac_psn_code,prac_psn_type\nD110105000001,1\n")  # plain text under a .gz name
    write_manifest(path, row_count=1, watermark_seq=5_000, snapshot_id="B")
    with pytest.raises(SnapshotRefused, match="gzip"):
        load_snapshot(redis_client, path, SnapshotOptions(force=True))
    assert_still_on_a(redis_client, redis_server.url, snapshot_a)


def test_an_empty_file_is_refused(
    redis_client: redis.Redis, redis_server: RedisServer, snapshot_a: int, tmp_path: Path
) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    write_manifest(path, row_count=0, watermark_seq=5_000, snapshot_id="B")
    with pytest.raises(SnapshotRefused, match="empty"):
        load_snapshot(redis_client, path, SnapshotOptions(force=True))
    assert_still_on_a(redis_client, redis_server.url, snapshot_a)


# --- compressed snapshots ---------------------------------------------------------------


def test_a_gzip_snapshot_loads_and_its_checksum_is_of_the_compressed_bytes(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    registry = generate(tmp_path, 2_000, compress=True, changes=10)
    assert registry.snapshot.name.endswith(".csv.gz")
    manifest = json.loads(registry.manifest.read_text())
    packed = registry.snapshot.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(packed).hexdigest()
    assert manifest["sha256"] != hashlib.sha256(gzip.decompress(packed)).hexdigest()

    result = load_snapshot(redis_client, registry.snapshot)
    assert (result.rows, result.practitioners, result.bad_rows, result.problems) == (registry.rows, 2_000, 0, [])
    plain = tmp_path / "plain.csv"
    plain.write_bytes(gzip.decompress(packed))
    rows = snapshot_rows(plain)
    sample = {row["prac_psn_code"] for row in rows[::97]}
    expected = expected_records([row for row in rows if row["prac_psn_code"] in sample])
    assert stored_records(redis_server.url, sample) == expected

    # A manifest holding the checksum of the uncompressed bytes does not match the file.
    write_manifest(
        registry.snapshot,
        row_count=registry.rows,
        watermark_seq=registry.watermark_seq,
        snapshot_id="other",
        sha256=hashlib.sha256(gzip.decompress(packed)).hexdigest(),
    )
    with pytest.raises(SnapshotRefused, match="checksum"):
        load_snapshot(redis_client, registry.snapshot)


# --- changes applied before and during a load --------------------------------------------


class PausingProgress(Progress):
    """Holds the load once ``after_rows`` rows are written, until ``resume`` is set: what
    happens "during" a load then happens during it, with no timing assumption."""

    def __init__(self, after_rows: int) -> None:
        super().__init__("snapshot")
        self.after_rows = after_rows
        self.paused = threading.Event()
        self.resume = threading.Event()

    def advance(self, count: int) -> None:
        super().advance(count)
        if self.done >= self.after_rows and not self.paused.is_set():
            self.paused.set()
            if not self.resume.wait(30):
                raise TimeoutError("the test never resumed the load")


class LoadInThread:
    """``load_snapshot`` on its own client in a thread, its result or error kept."""

    def __init__(self, port: int, path: Path, progress: Progress, options: SnapshotOptions | None = None) -> None:
        self.result: SnapshotResult | None = None
        self.error: BaseException | None = None
        self._client = redis.Redis(port=port)
        self._options = options or SnapshotOptions()
        self._thread = threading.Thread(target=self._run, args=(path, progress))
        self._thread.start()

    def _run(self, path: Path, progress: Progress) -> None:
        try:
            self.result = load_snapshot(self._client, path, self._options, progress=progress)
        except BaseException as error:
            self.error = error

    def join(self) -> SnapshotResult:
        self._thread.join(timeout=60)
        self._client.close()
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_changes_applied_before_and_during_a_load_survive_the_switch(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    registry = generate(tmp_path / "b", 50_000, changes=600, changes_per_file=300, snapshot_id="B")
    watermark = registry.watermark_seq
    first_half, second_half = registry.change_files
    # Snapshot A: what readers see until B is complete.
    load_snapshot(redis_client, write_snapshot(tmp_path, people(100), snapshot_id="A", watermark_seq=500))

    # Changes at or below B's watermark: B already holds what the registry says about them.
    registered = [row for row in snapshot_rows(registry.snapshot)[:3_000] if row["status"] == "1"]
    old_before, old_during = (
        period(row["prac_psn_code"], f"old-{n}", 2, "2026-01-01 00:00:00", seq=watermark - n, chg_rea="旧")
        for n, row in enumerate(registered[:2])
    )
    before = [*read_changes([first_half]), old_before]
    during = [*read_changes([second_half]), old_during]
    quarantine = Quarantine(tmp_path / "q.jsonl")
    applied = apply_change_files(redis_client, [write_changes(tmp_path / "before.jsonl", before)], quarantine)
    assert (applied.stats.applied, applied.bad_rows) == (len(before), 0)

    progress = PausingProgress(after_rows=20_000)
    load = LoadInThread(redis_server.port, registry.snapshot, progress)
    try:
        assert progress.paused.wait(30), "the load never started"
        assert redis_client.exists(keys.LOADING) == 1
        applied = apply_change_files(redis_client, [write_changes(tmp_path / "during.jsonl", during)], quarantine)
        assert (applied.stats.applied, applied.bad_rows) == (len(during), 0)
        # Readers still answer from A, which has the changes too.
        assert lookup(redis_server.url, [SUBJECT]).registry_version == f"A@{registry.last_change_seq}"
    finally:
        progress.resume.set()
        result = load.join()
    quarantine.close()

    assert result.problems == []
    assert read_state(redis_client).snapshot_id == "B"
    changes = before + during
    codes = {change["prac_psn_code"] for change in changes}
    expected = expected_records(snapshot_rows(registry.snapshot, codes), changes, watermark_seq=watermark)
    stored = stored_records(redis_server.url, codes)
    assert stored == expected
    for old in (old_before, old_during):  # at or below the watermark: ignored by B
        assert old["chg_id"] not in {p.chg_id for p in stored[old["prac_psn_code"]].periods}
    assert lookup(redis_server.url, codes).registry_version == f"B@{registry.last_change_seq}"
    assert {int(g) for g in redis_client.smembers(keys.GENERATIONS)} == {result.generation}


# --- integrity findings, and one load at a time -------------------------------------------


def test_a_registration_during_a_ban_is_reported_and_still_loaded(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    def banned(code: str, reregistered: str, seq: int) -> list[dict[str, str]]:
        return [
            period(code, f"{code}-r1", 1, "2015-01-01 00:00:00", "2024-01-01 00:00:00", seq=seq),
            period(
                code,
                f"{code}-t",
                3,
                "2024-01-01 00:00:00",
                reregistered,
                ban_endtime="2025-01-01 00:00:00",
                chg_rea="欺诈骗保",
                seq=seq + 1,
            ),
            period(code, f"{code}-r2", 1, reregistered, seq=seq + 2),
        ]

    early, early_reversed, after_ban = "D110105000001", "D110105000002", "D110105000003"
    rows = banned(early, "2024-06-01 00:00:00", 1)
    rows += list(reversed(banned(early_reversed, "2024-07-01 00:00:00", 4)))
    rows += banned(after_ban, "2025-02-01 00:00:00", 7)
    result = load_snapshot(redis_client, write_snapshot(tmp_path, rows))
    assert result.findings == [early, early_reversed]
    record = lookup(redis_server.url, [early]).records[early]
    assert len(record.periods) == 3
    assert standing_at(record, parse_cst("2024-08-01 00:00:00")).reason == Reason.OK
    assert standing_at(record, parse_cst("2024-03-01 00:00:00")).reason == Reason.TERMINATED


def test_a_second_load_is_refused_while_one_holds_the_lease(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second loader waits as long as the holder's lease has left (plus a margin), in case
    # the holder was killed; the holder here is alive and renewing, so keep both short.
    monkeypatch.setattr(loader.cache, "LEASE_WAIT_MARGIN_SECONDS", 0.0)
    load_snapshot(redis_client, write_snapshot(tmp_path, people(100), snapshot_id="A", name="a.csv"))
    first = write_snapshot(tmp_path, people(3_000), snapshot_id="B", name="b.csv")
    second = write_snapshot(tmp_path, people(3_000), snapshot_id="C", name="c.csv")
    progress = PausingProgress(after_rows=1_000)
    load = LoadInThread(redis_server.port, first, progress, SnapshotOptions(lease_seconds=1.5))
    try:
        assert progress.paused.wait(30), "the load never started"
        holder = redis_client.get(keys.LOADING)
        with pytest.raises(LoaderBusy, match="another snapshot load holds"):
            load_snapshot(redis_client, second, SnapshotOptions(lease_seconds=0.5))
        assert redis_client.get(keys.LOADING) == holder  # the refused load took nothing
        assert read_state(redis_client).snapshot_id == "A"
    finally:
        progress.resume.set()
        result = load.join()
    assert (result.snapshot_id, result.practitioners) == ("B", 3_000)
    assert read_state(redis_client).snapshot_id == "B"
    assert lookup(redis_server.url, ["D110105002998"]).records  # the last row made it in
    assert standing(redis_server.url, SUBJECT) == Reason.OK


def test_a_change_applied_while_rows_are_bulk_written_is_logged_then_replayed_into_the_new_generation(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load_snapshot(redis_client, write_snapshot(tmp_path, people(100), snapshot_id="A", name="a.csv"))
    progress = PausingProgress(after_rows=1_000)
    path = write_snapshot(tmp_path, people(3_000, seq_base=100), snapshot_id="B", name="b.csv")
    load = LoadInThread(redis_server.port, path, progress)
    try:
        assert progress.paused.wait(30), "the load never started"
        lease = read_lease(redis_client)
        assert lease is not None and not lease.takes_changes  # the bulk phase
        applied = ApplyStats()
        ChangeApplier(redis_client).apply([encode_change(suspend_subject(10_000))], applied)
        assert applied.applied == 1
        assert standing(redis_server.url, SUBJECT) == Reason.SUSPENDED  # in the current generation now
        # Not written into the loading generation, where the bulk HSETs could lose it.
        loading_bucket = keys.bucket_key(lease.generation, keys.bucket_of(SUBJECT, lease.buckets))
        assert not redis_client.hexists(loading_bucket, SUBJECT)
    finally:
        progress.resume.set()
        result = load.join()
    assert (result.snapshot_id, result.practitioners, result.replayed_changes) == ("B", 3_000, 1)
    assert standing(redis_server.url, SUBJECT) == Reason.SUSPENDED  # replayed into B
    assert read_state(redis_client).applied_seq == 10_000
