"""Differential test of the loader: random registry histories through the real loader into
a real Redis, compared with a direct reading of REGISTRY_FORMAT.md.

A history is a list of versions of a few chg_ids, seq strictly increasing; a version may
name another code than the one before (a moved period), collapse its window to nothing,
or withdraw it. The loader gets two snapshots (each holding some older versions too, in
any row order), change files before, during and after the second load (shuffled,
re-delivered, older ones mixed in), and must end with what the whole history says.
"""

from __future__ import annotations

import datetime
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.core.cst import parse_cst
from gatekeeper.core.rules import Reason, standing_at
from loader.cache import ApplyStats, ChangeApplier, read_state
from loader.changes import apply_change_files
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import encode_change
from loader.snapshot import SnapshotOptions, load_snapshot
from tests.integration.registry import lookup, period, write_changes, write_snapshot
from tests.servers import RedisServer

CODES = ("D110105000101", "D110105000102", "D110105000103")
# Two of them have one CRC-32, so one tag in one piece of the chg_id index
# (tests/integration/test_registry_meaning.py).
CHG_IDS = ("x-1", "x-2", "x-3", "CHG202609685295", "CHG202612060020")
DAY = 86_400
BASE = parse_cst("2026-01-01 00:00:00")
CST = datetime.timezone(datetime.timedelta(hours=8))


@dataclass(frozen=True)
class Version:
    """One registry record: a version of one chg_id."""

    chg_id: str
    code: str
    status: int  # 1 registered, 2 suspended, 3 terminated
    begntime: int
    endtime: int | None  # None: open-ended; == begntime: an empty window
    valid: bool
    seq: int

    def row(self) -> dict[str, str]:
        return period(
            self.code,
            self.chg_id,
            self.status,
            _cst(self.begntime),
            "" if self.endtime is None else _cst(self.endtime),
            seq=self.seq,
            chg_rea="" if self.status == 1 else "原因",
            vali_flag=1 if self.valid else 0,
        )


def _cst(moment: int) -> str:
    """Epoch seconds as the registry writes them (China Standard Time)."""
    return datetime.datetime.fromtimestamp(moment, CST).strftime("%Y-%m-%d %H:%M:%S")


@st.composite
def histories(draw: st.DrawFn) -> list[Version]:
    versions = []
    for number in range(draw(st.integers(1, 14))):
        begins = BASE + draw(st.integers(0, 4)) * DAY
        length = draw(st.one_of(st.none(), st.integers(0, 3)))
        versions.append(
            Version(
                chg_id=draw(st.sampled_from(CHG_IDS)),
                code=draw(st.sampled_from(CODES)),
                status=draw(st.sampled_from((1, 1, 2, 3))),
                begntime=begins,
                endtime=None if length is None else begins + length * DAY,
                valid=draw(st.booleans()) or draw(st.booleans()),
                seq=10 * (number + 1),
            )
        )
    return versions


# --- the reference: REGISTRY_FORMAT.md, read directly ------------------------------------


def latest(versions: Iterable[Version]) -> dict[str, Version]:
    """Each chg_id's version with the highest seq: "a later record with the same chg_id replaces it"."""
    newest: dict[str, Version] = {}
    for version in versions:
        if version.chg_id not in newest or version.seq > newest[version.chg_id].seq:
            newest[version.chg_id] = version
    return newest


def registry_standing(versions: Iterable[Version], code: str, moment: int) -> Reason:
    """The rules of interpretation at ``moment``, for ``code``."""
    covering = {
        v.status
        for v in latest(versions).values()
        if v.code == code and v.valid and v.begntime <= moment and (v.endtime is None or moment < v.endtime)
    }
    if 3 in covering:
        return Reason.TERMINATED
    if 2 in covering:
        return Reason.SUSPENDED
    if 1 in covering:
        return Reason.OK
    return Reason.UNREGISTERED


def registry_windows(versions: Iterable[Version], code: str) -> list[tuple[int, int, int]]:
    """(status, begntime, endtime) of the code's periods; withdrawn ones as status 0, open-ended as 0."""
    return sorted(
        (v.status if v.valid else 0, v.begntime, v.endtime or 0) for v in latest(versions).values() if v.code == code
    )


# --- driving the loader ------------------------------------------------------------------


def snapshot_rows(versions: Sequence[Version], watermark: int, rng: random.Random) -> list[dict[str, str]]:
    """The registry at ``watermark``, with some superseded versions too, in any order."""
    upto = [v for v in versions if v.seq <= watermark]
    rows = list(latest(upto).values()) + [v for v in upto if rng.random() < 0.3]
    rng.shuffle(rows)
    return [v.row() for v in rows]


def deliveries(versions: Sequence[Version], rng: random.Random) -> list[list[dict[str, str]]]:
    """``versions`` shuffled into up to three change files, some delivered twice."""
    chosen = list(versions) + [v for v in versions if rng.random() < 0.3]
    rng.shuffle(chosen)
    cuts = sorted(rng.sample(range(len(chosen) + 1), 2)) if chosen else [0, 0]
    files = [chosen[: cuts[0]], chosen[cuts[0] : cuts[1]], chosen[cuts[1] :]]
    return [[v.row() for v in file] for file in files if file]


class ApplyDuring(Progress):
    """Applies changes once the load has written its first batch: into the loading generation."""

    def __init__(self, client: redis.Redis, changes: list[dict[str, str]]) -> None:
        super().__init__("snapshot")
        self._client, self._changes = client, changes

    def advance(self, count: int) -> None:
        super().advance(count)
        self.finish()

    def finish(self) -> None:
        """Apply the changes now if the load never wrote a batch (an empty snapshot)."""
        if self._changes:
            ChangeApplier(self._client).apply([encode_change(c) for c in self._changes], ApplyStats())
            self._changes = []


def apply_files(client: redis.Redis, directory: Path, files: list[list[dict[str, str]]], name: str) -> None:
    quarantine = Quarantine(directory / f"{name}.quarantine.jsonl")
    paths = [write_changes(directory / f"{name}-{n}.jsonl", rows) for n, rows in enumerate(files)]
    try:
        result = apply_change_files(client, paths, quarantine)
    finally:
        quarantine.close()
    assert result.bad_rows == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=histories(), data=st.data())
def test_the_cache_says_what_the_registry_says(
    redis_server: RedisServer, versions: list[Version], data: st.DataObject
) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="shuffle seed"))
    seqs = [0] + [v.seq for v in versions]
    first_watermark = data.draw(st.sampled_from(seqs), label="first watermark")
    second_watermark = data.draw(st.sampled_from([s for s in seqs if s >= first_watermark]), label="second watermark")
    after_first = [v for v in versions if v.seq > first_watermark]
    before_second = [v for v in after_first if rng.random() < 0.5]
    during_second = [v for v in versions if rng.random() < 0.3]
    # Whatever the second snapshot does not hold and was not delivered yet comes after it,
    # with re-deliveries of anything, older versions included.
    delivered = {v.seq for v in before_second + during_second}
    after_second = [v for v in versions if v.seq > second_watermark and v.seq not in delivered]
    after_second += [v for v in versions if rng.random() < 0.3]

    client = redis_server.client()
    client.flushall()
    with tempfile.TemporaryDirectory() as temporary, mock.patch("loader.snapshot.BATCH_ROWS", 2):
        directory = Path(temporary)
        (directory / "one").mkdir()
        (directory / "two").mkdir()
        first = write_snapshot(
            directory / "one", snapshot_rows(versions, first_watermark, rng), watermark_seq=first_watermark
        )
        load_snapshot(client, first, progress=Progress("snapshot"))
        apply_files(client, directory, deliveries(before_second, rng), "before")
        second = write_snapshot(
            directory / "two",
            snapshot_rows(versions, second_watermark, rng),
            snapshot_id="two",
            watermark_seq=second_watermark,
        )
        during = ApplyDuring(redis_server.client(), [v.row() for v in during_second])
        # Moves can empty a code, and small histories shrink by more than 5 %: the shrink
        # guard is policy, tested elsewhere.
        result = load_snapshot(client, second, SnapshotOptions(max_shrink=1.0), progress=during)
        assert result.problems == []
        # Counted true, whatever the changes written into it while it loaded.
        assert result.practitioners == read_state(client).record_count == len(lookup(redis_server.url, CODES).records)
        during.finish()
        apply_files(client, directory, deliveries(after_second, rng), "after")

    state = read_state(client)
    assert (state.snapshot_id, state.applied_seq) == ("two", versions[-1].seq)
    records = lookup(redis_server.url, CODES).records
    # The periods each code holds: one per chg_id whose latest version names it, and the
    # code itself only while it holds one.
    for code in CODES:
        expected = registry_windows(versions, code)
        record = records.get(code)
        stored = sorted((p.status, p.begntime, p.endtime) for p in record.periods) if record else []
        assert stored == expected, code
    # And the decisions at every window edge, and a second either side.
    edges = {t for v in versions for t in (v.begntime, v.endtime) if t is not None}
    for moment in sorted({t + delta for t in edges for delta in (-1, 0, 1)}):
        for code in CODES:
            assert standing_at(records.get(code), moment).reason == registry_standing(versions, code, moment), (
                code,
                _cst(moment),
            )
