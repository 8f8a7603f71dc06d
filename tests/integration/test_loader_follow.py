"""``follow`` against the real HTTP change feed and Redis: everything applied, resumed from the
stored cursor, retried through failures, stopped cleanly by SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.rules import Reason, standing_at
from loader.cache import NoSnapshot, read_state
from loader.feed import ChangeFeedServer
from loader.follow import FollowOptions, follow
from loader.generate import GeneratedRegistry, generate
from loader.quarantine import Quarantine
from loader.snapshot import load_snapshot
from tests.integration.conftest import on_both_redis
from tests.integration.follower import Follower, cursor
from tests.integration.registry import (
    expected_records,
    lookup,
    period,
    read_changes,
    snapshot_rows,
    stored_records,
    write_changes,
)
from tests.servers import RedisServer

pytestmark = on_both_redis  # the core cases run against one Redis and the Redis Cluster

CLI = Path(sys.executable).parent / "gatekeeper-loader"
FAST = FollowOptions(limit=50, poll_seconds=0.02, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
WAIT_SECONDS = 10.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRegistry:
    return generate(tmp_path_factory.mktemp("follow"), 2_000, changes=300, changes_per_file=100)


@pytest.fixture
def feed_dir(registry: GeneratedRegistry, tmp_path: Path) -> Path:
    """A private copy of the change files, so a test may drop new ones in."""
    directory = tmp_path / "feed"
    directory.mkdir()
    for path in registry.change_files:
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


@pytest.fixture
def loaded(redis_client: redis.Redis, registry: GeneratedRegistry) -> redis.Redis:
    load_snapshot(redis_client, registry.snapshot)
    return redis_client


def start_follower(port: int, url: str, quarantine: Path, options: FollowOptions = FAST) -> Follower:
    """``follow`` with this module's fast options; it must stop within WAIT_SECONDS of being told to."""
    return Follower(port, url, quarantine, options, stop_within=WAIT_SECONDS)


def expected_for(registry: GeneratedRegistry, changes: list[dict[str, str]]) -> dict[str, object]:
    codes = {change["prac_psn_code"] for change in changes}
    rows = snapshot_rows(registry.snapshot, codes)
    return dict(expected_records(rows, changes, watermark_seq=registry.watermark_seq))


@pytest.fixture
def feed(feed_dir: Path) -> Iterator[ChangeFeedServer]:
    with ChangeFeedServer(feed_dir) as server:
        yield server


def test_follow_applies_every_change_and_a_restart_resumes_from_the_stored_cursor(
    loaded: redis.Redis,
    redis_server: RedisServer,
    registry: GeneratedRegistry,
    feed: ChangeFeedServer,
    feed_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="loader.follow")
    last = registry.last_change_seq
    first = start_follower(redis_server.port, feed.url, tmp_path / "q1.jsonl")
    first.wait_for_cursor(loaded, last)
    stats = first.stop()
    changes = read_changes(registry.change_files)
    assert (stats.applied.applied, stats.applied.stale, stats.errors, stats.bad_rows) == (len(changes), 0, 0, 0)
    assert stats.after == last
    codes = {change["prac_psn_code"] for change in changes}
    assert stored_records(redis_server.url, codes) == expected_for(registry, changes)
    assert read_state(loaded).applied_seq == last

    # The registry publishes two more changes, one of them broken; the loader restarts.
    subject = next(row for row in snapshot_rows(registry.snapshot) if row["status"] == "1")["prac_psn_code"]
    broken = period(subject, "follow-bad", 2, "2026-02-30 00:00:00", seq=last + 1)
    suspension = period(subject, "follow-new", 2, "2026-12-01 00:00:00", "2027-02-01 00:00:00", seq=last + 2)
    write_changes(feed_dir / f"changes-{last + 1}-{last + 2}.jsonl", [broken, suspension])
    caplog.clear()
    second = start_follower(redis_server.port, feed.url, tmp_path / "q2.jsonl")
    second.wait_for_cursor(loaded, last + 2)
    resumed = second.stop()

    assert f"following {feed.url} after seq {last}" in caplog.messages
    # Nothing from before the cursor came back (it would count as stale).
    assert (resumed.applied.applied, resumed.applied.stale, resumed.bad_rows) == (1, 0, 1)
    at = parse_cst("2026-12-15 00:00:00")
    assert standing_at(lookup(redis_server.url, [subject]).records[subject], at).reason == Reason.SUSPENDED
    (entry,) = [json.loads(line) for line in (tmp_path / "q2.jsonl").read_text(encoding="utf-8").splitlines()]
    assert entry["file"] == feed.url
    assert "begntime" in entry["reason"]


def test_follow_backs_off_through_feed_failures_and_still_gets_everything(
    loaded: redis.Redis,
    redis_server: RedisServer,
    registry: GeneratedRegistry,
    feed_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="loader.follow")
    with ChangeFeedServer(feed_dir, fail_every=2) as failing:
        follower = start_follower(redis_server.port, failing.url, tmp_path / "q.jsonl")
        follower.wait_for_cursor(loaded, registry.last_change_seq)
        stats = follower.stop()
    changes = read_changes(registry.change_files)
    assert stats.applied.applied == len(changes)
    # Every second request failed: the 6 pages of 50 took 11 requests, 5 of them answered 503.
    assert stats.errors >= 5
    assert stats.requests >= stats.errors + 6
    assert any("feed unavailable" in message for message in caplog.messages)
    codes = {change["prac_psn_code"] for change in changes}
    assert stored_records(redis_server.url, codes) == expected_for(registry, changes)


def test_follow_before_any_snapshot_refuses_to_apply(
    redis_client: redis.Redis, feed: ChangeFeedServer, tmp_path: Path
) -> None:
    with pytest.raises(NoSnapshot):
        follow(redis_client, feed.url, threading.Event(), Quarantine(tmp_path / "q.jsonl"), FAST)
    assert redis_client.keys("{gk}:*") == []


def test_the_follow_command_stops_cleanly_on_sigterm(
    loaded: redis.Redis, redis_server: RedisServer, registry: GeneratedRegistry, feed: ChangeFeedServer, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    command = [str(CLI), "follow", feed.url, "--poll", "0.05", "--limit", "100", "--quarantine", "q.jsonl"]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while cursor(loaded) < registry.last_change_seq:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the follow command never caught up"
            threading.Event().wait(0.02)
        holding = status(env, tmp_path)["follow_lease"]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert f"stopped after seq {registry.last_change_seq}: applied 300 changes" in stdout
    assert "Traceback" not in stderr
    # `status` names the follow holding the lease (host, pid, token); a stopped one let it go.
    assert holding is not None and holding.split()[1] == str(process.pid)
    assert status(env, tmp_path)["follow_lease"] is None


def status(env: dict[str, str], cwd: Path) -> dict[str, object]:
    shown = subprocess.run([str(CLI), "status", "--json"], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_a_second_follow_stands_by_while_the_first_holds_the_lease_then_takes_over(
    loaded: redis.Redis,
    redis_server: RedisServer,
    registry: GeneratedRegistry,
    feed: ChangeFeedServer,
    feed_dir: Path,
    tmp_path: Path,
) -> None:
    last = registry.last_change_seq
    quick = replace(FAST, lease_seconds=2.0)
    first = start_follower(redis_server.port, feed.url, tmp_path / "q1.jsonl", quick)
    first.wait_for_cursor(loaded, last)
    second = start_follower(redis_server.port, feed.url, tmp_path / "q2.jsonl", quick)
    subject = next(row for row in snapshot_rows(registry.snapshot) if row["status"] == "1")["prac_psn_code"]
    published = [
        period(subject, f"lease-{n}", 2, "2026-12-01 00:00:00", "2027-02-01 00:00:00", seq=last + n) for n in (1, 2)
    ]
    write_changes(feed_dir / f"changes-{last + 1}-{last + 1}.jsonl", published[:1])
    first.wait_for_cursor(loaded, last + 1)
    time.sleep(1.5 * quick.lease_seconds)  # long enough for the lease to lapse, were it not renewed
    holding = first.stop()  # releases the lease
    write_changes(feed_dir / f"changes-{last + 2}-{last + 2}.jsonl", published[1:])
    second.wait_for_cursor(loaded, last + 2)
    took_over = second.stop()

    changes = read_changes(registry.change_files)
    assert (holding.applied.applied, holding.standby_waits) == (len(changes) + 1, 0)
    # The standby applied nothing while the first held the lease (the change published then
    # would count as applied or stale); then it resumed from the stored cursor: only the
    # last change, nothing twice.
    assert took_over.standby_waits > 0
    assert (took_over.applied.applied, took_over.applied.stale) == (1, 0)
    assert loaded.get(keys.FOLLOWING) is None  # released on stop


def test_a_follow_whose_holder_died_takes_the_lease_when_it_lapses(
    loaded: redis.Redis, redis_server: RedisServer, registry: GeneratedRegistry, feed: ChangeFeedServer, tmp_path: Path
) -> None:
    loaded.set(keys.FOLLOWING, "gone-host 4242 0123456789abcdef", px=1_500)  # a killed loader's, never renewed
    started = time.monotonic()
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl", replace(FAST, lease_seconds=1.0))
    follower.wait_for_cursor(loaded, registry.last_change_seq)
    waited = time.monotonic() - started
    stats = follower.stop()
    assert waited >= 1.0  # not before the dead holder's lease lapsed
    assert stats.standby_waits > 0 and stats.applied.applied == len(read_changes(registry.change_files))
