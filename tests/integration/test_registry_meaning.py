"""The registry's meaning, exactly (issue 9): a chg_id is a period's identity wherever it
lives, no two chg_ids silently share a key, an empty window cancels, counts stay true
while changes arrive mid-load, and the registry never goes backwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.records import Status
from gatekeeper.core.rules import Reason, standing_at
from loader.cache import ApplyStats, ChangeApplier, read_state
from loader.changes import ApplyResult, apply_change_files
from loader.progress import Progress
from loader.quarantine import Quarantine
from loader.rows import encode_change
from loader.snapshot import SnapshotOptions, SnapshotRefused, load_snapshot
from tests.integration.registry import lookup, period, write_changes, write_snapshot
from tests.servers import RedisServer

A, B, C = "D110105000101", "D110105000102", "D110105000103"
JAN, MAR, MAY, JUN, JUL, SEP = (f"2026-{month:02d}-01 00:00:00" for month in (1, 3, 5, 6, 7, 9))
# Two chg_ids whose 32-bit keys collide (found by brute force over CHG2026<8 digits>).
COLLIDING = ("CHG202609685295", "CHG202612060020")
CLI = Path(sys.executable).parent / "gatekeeper-loader"


def registered(code: str, seq: int) -> dict[str, str]:
    return period(code, f"reg-{code}", 1, "2020-01-01 00:00:00", seq=seq)


def suspension(code: str, chg_id: str, begntime: str, endtime: str, *, seq: int, **extra: str) -> dict[str, str]:
    return period(code, chg_id, 2, begntime, endtime, seq=seq, chg_rea="暂停", **extra)  # type: ignore[arg-type]


def standings(redis_url: str, moment: str, codes: Iterable[str] = (A, B)) -> dict[str, Reason]:
    records = lookup(redis_url, list(codes)).records
    return {code: standing_at(records.get(code), parse_cst(moment)).reason for code in codes}


def snapshot(directory: Path, rows: list[dict[str, str]], **manifest: object) -> Path:
    """A snapshot and its manifest in ``directory`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_snapshot(directory, rows, **manifest)  # type: ignore[arg-type]


def apply(client: redis.Redis, directory: Path, name: str, changes: Iterable[Mapping[str, str]]) -> ApplyResult:
    quarantine = Quarantine(directory / "changes.quarantine.jsonl")
    try:
        return apply_change_files(client, [write_changes(directory / name, changes)], quarantine)
    finally:
        quarantine.close()


class ApplyingProgress(Progress):
    """Applies ``changes`` once, when the load reports progress for the ``at``-th time (the
    first: its first piece read; then after each merge call sent): changes that reach the
    generation being loaded before its own rows for those codes do."""

    def __init__(self, client: redis.Redis, changes: list[dict[str, str]], at: int = 1) -> None:
        super().__init__("snapshot")
        self._client = client
        self._changes = changes
        self._at = at
        self.applied = ApplyStats()

    def advance(self, count: int) -> None:
        super().advance(count)
        self._at -= 1
        if self._changes and self._at == 0:
            assert self._client.exists(keys.LOADING) == 1
            ChangeApplier(self._client).apply([encode_change(c) for c in self._changes], self.applied)
            self._changes = []


# --- 1. a chg_id is the identity of a period, whatever code it names -------------------


@pytest.mark.parametrize("newer_first", [False, True], ids=["in-seq-order", "newer-row-first"])
def test_a_chg_id_moved_to_another_code_inside_one_snapshot_leaves_only_the_new_code(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path, newer_first: bool
) -> None:
    older = suspension(A, "s-1", JAN, SEP, seq=3)
    newer = suspension(B, "s-1", JAN, SEP, seq=4)  # the registry corrected whose window it is
    moved = [newer, older] if newer_first else [older, newer]
    load_snapshot(redis_client, snapshot(tmp_path, [registered(A, 1), registered(B, 2), *moved]))
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.SUSPENDED}


@pytest.mark.parametrize("newer_first", [False, True], ids=["in-seq-order", "newer-file-first"])
def test_a_change_moving_a_chg_id_takes_the_period_from_the_old_code_in_either_order(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path, newer_first: bool
) -> None:
    rows = [registered(A, 1), registered(B, 2), suspension(A, "s-1", JAN, SEP, seq=3)]
    load_snapshot(redis_client, snapshot(tmp_path, rows, watermark_seq=3))
    older = suspension(A, "s-1", JAN, JUL, seq=7)  # an intermediate version, for A
    newer = suspension(B, "s-1", JAN, SEP, seq=10)  # the latest: B's
    files = [("newer.jsonl", [newer]), ("older.jsonl", [older])]
    for name, changes in files if newer_first else reversed(files):
        apply(redis_client, tmp_path, name, changes)
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.SUSPENDED}
    # Re-delivered, the older version for A still cannot take the period back.
    again = apply(redis_client, tmp_path, "again.jsonl", [older])
    assert (again.stats.applied, again.stats.stale) == (0, 1)
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.SUSPENDED}
    assert read_state(redis_client).applied_seq == 10


@pytest.mark.parametrize("row_before_the_move", [True, False], ids=["row-then-move", "move-then-row"])
def test_a_move_applied_while_a_snapshot_loads_wins_over_the_snapshot_row(
    redis_client: redis.Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    row_before_the_move: bool,
) -> None:
    base = [registered(A, 1), registered(B, 2)]
    load_snapshot(redis_client, snapshot(tmp_path / "first", base, snapshot_id="first", watermark_seq=2))
    monkeypatch.setattr("loader.snapshot.BATCH_ROWS", 2)
    # The feed moves s-1 to B while the next snapshot (which still has it on A) loads: the
    # move reaches the loading generation before or after the snapshot's own row for A.
    old_row = suspension(A, "s-1", JAN, SEP, seq=5)
    rows = [old_row, registered(A, 1), registered(B, 2)] if row_before_the_move else [*base, old_row]
    progress = ApplyingProgress(redis_server.client(), [suspension(B, "s-1", JAN, SEP, seq=10)])
    path = snapshot(tmp_path / "second", rows, snapshot_id="second", watermark_seq=5)
    result = load_snapshot(redis_client, path, progress=progress)
    assert progress.applied.applied == 1
    assert (result.practitioners, read_state(redis_client).snapshot_id) == (2, "second")
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.SUSPENDED}


def test_a_move_applied_while_a_snapshots_rows_are_merged_reaches_a_row_whose_chg_id_was_new(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = snapshot(tmp_path / "first", [registered(A, 1), registered(B, 2)], snapshot_id="first", watermark_seq=2)
    load_snapshot(redis_client, first)
    monkeypatch.setattr("loader.snapshot.BATCH_ROWS", 1)
    # s-9 is new to the snapshot where its row comes, but A is not: the row is merged after
    # the bulk writes, with its index entry bulk-written. The feed moves s-9 to B between the
    # first merge call and that row's.
    rows = [registered(A, 1), registered(B, 2), period(B, "r-B2", 1, "2021-01-01 00:00:00", seq=3)]
    rows.append(suspension(A, "s-9", JAN, SEP, seq=5))
    progress = ApplyingProgress(redis_server.client(), [suspension(B, "s-9", JAN, SEP, seq=10)], at=2)
    second = snapshot(tmp_path / "second", rows, snapshot_id="second", watermark_seq=5)
    result = load_snapshot(redis_client, second, progress=progress)
    assert progress.applied.applied == 1
    assert result.problems == []
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.SUSPENDED}


# --- 2. no silent collisions -----------------------------------------------------------


def test_the_colliding_chg_ids_really_collide() -> None:
    first, second = COLLIDING
    assert first != second
    assert zlib.crc32(first.encode()) == zlib.crc32(second.encode())
    # so they share a piece of the chg_id index and a tag in it, in a cache of any size
    assert keys.chg_tag_of(first) == keys.chg_tag_of(second)


def test_two_chg_ids_of_one_practitioner_with_one_key_keep_both_periods(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    first, second = COLLIDING
    rows = [registered(A, 1), suspension(A, first, JAN, MAR, seq=2), suspension(A, second, JUN, SEP, seq=3)]
    load_snapshot(redis_client, snapshot(tmp_path, rows))
    periods = lookup(redis_server.url, [A]).records[A].periods
    assert sorted((p.begntime, p.seq) for p in periods if p.status == Status.SUSPENDED) == [
        (parse_cst(JAN), 2),
        (parse_cst(JUN), 3),
    ]
    assert standings(redis_server.url, "2026-02-01 00:00:00", [A]) == {A: Reason.SUSPENDED}
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A]) == {A: Reason.SUSPENDED}

    # Each chg_id stays its own period: withdrawing the second leaves the first in force.
    apply(redis_client, tmp_path, "withdraw.jsonl", [suspension(A, second, JUN, SEP, seq=20, vali_flag="0")])
    assert standings(redis_server.url, "2026-02-01 00:00:00", [A]) == {A: Reason.SUSPENDED}
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A]) == {A: Reason.OK}
    # And an older version of the first, re-delivered, is still older than what is there.
    stale = apply(redis_client, tmp_path, "stale.jsonl", [suspension(A, first, JAN, SEP, seq=2)])
    assert stale.stats.stale == 1
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A]) == {A: Reason.OK}


def test_a_change_whose_chg_id_collides_with_a_loaded_one_adds_a_period(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    first, second = COLLIDING
    load_snapshot(redis_client, snapshot(tmp_path, [registered(A, 1), suspension(A, first, JAN, MAR, seq=2)]))
    apply(redis_client, tmp_path, "second.jsonl", [suspension(A, second, JUN, SEP, seq=5)])
    assert standings(redis_server.url, "2026-02-01 00:00:00", [A]) == {A: Reason.SUSPENDED}
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A]) == {A: Reason.SUSPENDED}
    assert len(lookup(redis_server.url, [A]).records[A].periods) == 3


def test_moving_one_of_two_chg_ids_that_share_an_index_entry_takes_only_its_own_period(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    first, second = COLLIDING  # on two codes: the index's entries for them look alike
    rows = [
        registered(A, 1),
        registered(B, 2),
        suspension(A, first, JAN, MAR, seq=3),
        suspension(B, second, JUN, SEP, seq=4),
    ]
    load_snapshot(redis_client, snapshot(tmp_path, rows))
    moved = apply(redis_client, tmp_path, "move.jsonl", [suspension(C, second, JUN, SEP, seq=10)])
    assert moved.stats.applied == 1
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A, B, C]) == {
        A: Reason.OK,
        B: Reason.OK,
        C: Reason.SUSPENDED,
    }
    assert standings(redis_server.url, "2026-02-01 00:00:00", [A]) == {A: Reason.SUSPENDED}
    # The index now sends the second to C: an older version for B is stale, a newer one moves it back.
    stale = apply(redis_client, tmp_path, "stale.jsonl", [suspension(B, second, JUN, SEP, seq=9)])
    assert stale.stats.stale == 1
    apply(redis_client, tmp_path, "back.jsonl", [suspension(B, second, JUN, SEP, seq=11)])
    assert standings(redis_server.url, "2026-07-01 00:00:00", [A, B, C]) == {
        A: Reason.OK,
        B: Reason.SUSPENDED,
        C: Reason.UNREGISTERED,
    }


# --- 3. an empty window is valid data ---------------------------------------------------


def test_a_window_collapsed_to_nothing_cancels_the_older_version(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load_snapshot(redis_client, snapshot(tmp_path, [registered(A, 1), suspension(A, "s-1", JAN, SEP, seq=2)]))
    assert standings(redis_server.url, MAY, [A]) == {A: Reason.SUSPENDED}
    collapsed = apply(redis_client, tmp_path, "collapse.jsonl", [suspension(A, "s-1", JAN, JAN, seq=9)])
    assert (collapsed.stats.applied, collapsed.bad_rows) == (1, 0)
    for moment in ("2025-12-31 23:59:59", JAN, "2026-01-01 00:00:01", MAY):
        assert standings(redis_server.url, moment, [A]) == {A: Reason.OK}, moment


def test_a_snapshot_row_with_an_empty_window_loads_and_one_ending_before_it_begins_does_not(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rows = [
        registered(A, 1),
        suspension(A, "s-empty", MAY, MAY, seq=2),
        registered(B, 3),
        suspension(B, "s-broken", MAY, MAR, seq=4),
    ]
    result = load_snapshot(redis_client, snapshot(tmp_path, rows), SnapshotOptions(max_bad_share=0.5))
    assert result.bad_rows == 1
    assert result.quarantine is not None
    (report,) = [json.loads(line) for line in result.quarantine.read_text(encoding="utf-8").splitlines()]
    assert "endtime is before begntime" in report["reason"]
    periods = lookup(redis_server.url, [A]).records[A].periods
    assert [(p.begntime, p.endtime) for p in periods if p.status == Status.SUSPENDED] == [
        (parse_cst(MAY), parse_cst(MAY))
    ]
    assert standings(redis_server.url, MAY) == {A: Reason.OK, B: Reason.OK}


# --- 4. counts stay true under concurrency -----------------------------------------------


def test_changes_written_into_a_loading_generation_do_not_lower_its_practitioner_count(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = [f"D1101050{n:05d}" for n in range(40)]
    rows = [registered(code, n + 1) for n, code in enumerate(codes)]
    load_snapshot(redis_client, snapshot(tmp_path / "first", rows, snapshot_id="first", watermark_seq=40))
    assert read_state(redis_client).record_count == 40

    monkeypatch.setattr("loader.snapshot.BATCH_ROWS", 10)
    # While the next snapshot loads, the feed suspends the 30 practitioners its later batches hold.
    during = [suspension(code, f"s-{code}", JAN, SEP, seq=100 + n) for n, code in enumerate(codes[10:])]
    progress = ApplyingProgress(redis_server.client(), during)
    path = snapshot(tmp_path / "second", rows, snapshot_id="second", watermark_seq=40)
    result = load_snapshot(redis_client, path, progress=progress)
    assert progress.applied.applied == 30
    assert result.practitioners == 40
    assert result.problems == []
    state = read_state(redis_client)
    assert (state.snapshot_id, state.record_count) == ("second", 40)
    assert standings(redis_server.url, MAY, codes[-1:]) == {codes[-1]: Reason.SUSPENDED}


# --- 5. the registry never goes backwards -------------------------------------------------


def cli(*args: str, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run([str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_snapshot_older_than_the_loaded_one_is_refused_unless_forced(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    rows = [registered(A, 1), registered(B, 2)]
    load_snapshot(redis_client, snapshot(tmp_path / "new", rows, snapshot_id="new", watermark_seq=100))
    apply(redis_client, tmp_path, "later.jsonl", [suspension(A, "s-1", JAN, SEP, seq=120)])
    assert lookup(redis_server.url, [A]).registry_version == "new@120"

    old = snapshot(tmp_path / "old", rows, snapshot_id="old", watermark_seq=50)
    with pytest.raises(SnapshotRefused, match="watermark_seq 50 is below the loaded snapshot's 100"):
        load_snapshot(redis_client, old)
    assert read_state(redis_client).snapshot_id == "new"

    refused = cli("snapshot", str(old), redis_url=redis_server.url, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
    assert "watermark_seq 50 is below the loaded snapshot's 100 (the cache has applied up to seq 120)" in refused.stderr
    assert "--force" in refused.stderr
    assert read_state(redis_client).snapshot_id == "new"

    redis_client.set(keys.FOLLOW_CURSOR, 120)  # where `follow` would resume
    forced = cli("snapshot", "--force", str(old), redis_url=redis_server.url, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "warning: forced past a failed check: the snapshot's watermark_seq 50" in forced.stderr
    status = json.loads(cli("status", "--json", redis_url=redis_server.url, cwd=tmp_path).stdout)
    assert (status["snapshot_id"], status["applied_seq"], status["registry_version"]) == ("old", 50, "old@50")
    assert lookup(redis_server.url, [A]).registry_version == "old@50"
    assert redis_client.get(keys.FOLLOW_CURSOR) == b"50"  # the changes after 50 must come again
