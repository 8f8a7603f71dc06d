"""Readers see a snapshot switch atomically: never half old, half new."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.snapshot import SnapshotOptions, load_snapshot
from tests.integration.conftest import RunningGatekeeper
from tests.integration.registry import load, period, write_snapshot

PEOPLE = 600  # several buckets, so the two codes below live in different hashes


def snapshot(directory: Path, name: str, suspended: str, registered: str, seq: int) -> Path:
    rows = [period(f"D1101050{n:05d}", f"r{n}", 1, "2020-01-01 00:00:00", seq=n) for n in range(PEOPLE)]
    rows.append(period(suspended, f"s-{name}", 2, "2026-01-01 00:00:00", seq=seq, chg_rea="暂停"))
    return write_snapshot(directory, rows, snapshot_id=name, watermark_seq=seq, name=f"{name}.csv")


def test_a_reader_polling_during_reloads_never_sees_a_mixed_snapshot(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    first, second = "D110105000001", "D110105000002"
    buckets = keys.bucket_count_for(PEOPLE)
    assert keys.bucket_of(first, buckets) != keys.bucket_of(second, buckets)
    snapshot_a = snapshot(tmp_path, "A", suspended=first, registered=second, seq=10_000)
    snapshot_b = snapshot(tmp_path, "B", suspended=second, registered=first, seq=20_000)
    load(redis_client, snapshot_a)
    expected = {"A@10000": [pb.VERDICT_BLOCK, pb.VERDICT_ALLOW], "B@20000": [pb.VERDICT_ALLOW, pb.VERDICT_BLOCK]}

    done = threading.Event()
    loads = 0

    def reload_repeatedly() -> None:
        nonlocal loads
        loader_client = redis.Redis(port=redis_client.connection_pool.connection_kwargs["port"])
        while not done.is_set() and loads < 40:
            # Going back to A is going backwards in the registry: forced (issue 9).
            load_snapshot(loader_client, snapshot_b if loads % 2 == 0 else snapshot_a, SnapshotOptions(force=True))
            loads += 1
        done.set()

    request = pb.CheckClaimRequest(
        claim_id="switch",
        fixmedins_code="H11010500001",
        items=[
            pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg=first, amount_fen=1),
            pb.LineItem(feedetl_sn="2", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg=second, amount_fen=1),
        ],
    )
    loader = threading.Thread(target=reload_repeatedly)
    loader.start()
    seen: dict[str, int] = {}
    try:
        while not done.is_set() and sum(seen.values()) < 20_000:
            response = gatekeeper.stub.CheckClaim(request, timeout=5)
            verdicts = [item.verdict for item in response.items]
            assert verdicts == expected[response.registry_version], response.registry_version
            seen[response.registry_version] = seen.get(response.registry_version, 0) + 1
    finally:
        done.set()
        loader.join()
    assert loads >= 2
    assert set(seen) == set(expected), seen  # the reader really saw both snapshots
    generations = {int(g) for g in redis_client.smembers(keys.GENERATIONS)}
    assert generations == {int(redis_client.hget(keys.META, keys.MetaField.GENERATION))}  # old ones dropped


def test_a_routine_snapshot_switch_is_logged_at_info_not_warning(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatekeeper.cache.follower")
    load(redis_client, snapshot(tmp_path, "A", suspended="D110105000001", registered="D110105000002", seq=10_000))
    # The worker is following the change stream once a claim has been answered from the snapshot.
    gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="D110105000001"), timeout=5)
    load(redis_client, snapshot(tmp_path, "B", suspended="D110105000002", registered="D110105000001", seq=20_000))
    deadline = time.monotonic() + 10
    while not [r for r in caplog.records if "snapshot switched" in r.getMessage()]:
        assert time.monotonic() < deadline, "the worker never noticed the switch"
        threading.Event().wait(0.02)
    switched = [r for r in caplog.records if "snapshot switched" in r.getMessage()]
    # One per switch the worker saw (under load it may see A's as well as B's): each routine.
    assert switched and {r.levelname for r in switched} == {"INFO"}
