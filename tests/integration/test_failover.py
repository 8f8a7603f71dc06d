"""Failover on the session's real Redis Cluster: the master holding the cache is killed
mid-traffic, its replica takes over, and the old master returns as a replica (then takes
its slot back, so that the other tests find the cluster as it was)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from loader.cache import LeaseLost, read_change_log, read_state
from loader.feed import ChangeFeedServer
from loader.follow import FollowOptions
from loader.snapshot import SnapshotOptions, load_snapshot
from tests.integration.conftest import StartGatekeeper
from tests.integration.follower import Follower
from tests.integration.registry import load, period, write_changes, write_snapshot
from tests.integration.test_audit import audited, wait_until
from tests.integration.test_degraded import COLD, COLD_START, REDIS_TIMEOUT, claim, registry
from tests.integration.test_loader_snapshot import PausingProgress
from tests.servers import RedisCluster

# Suspended by the change feed while the test runs: five before the failover, five during it.
CHANGED = [f"D1101050{n:05d}" for n in range(100, 110)]
FAILOVER_SECONDS = 30.0  # bounds every wait on the cluster; a failover takes about two node timeouts


def fail_over(cluster: RedisCluster, during: Callable[[], object] = lambda: None) -> float:
    """Kill the master holding the cache, run ``during``, wait until its replica serves the
    slot, restart the old master and wait until it is the new master's replica. Then hand
    the slot back to it (a planned CLUSTER FAILOVER, nothing lost), so that the session's
    cluster is as the other tests found it. Returns when the master was killed."""
    victim = cluster.master_of(keys.META)
    with redis.Redis(port=victim.port) as master:
        master.wait(1, 5_000)  # the replica has every write so far: this test is about failover, not lost writes
    killed_at = time.monotonic()
    victim.kill()
    during()
    promoted = cluster.wait_slot_served(keys.META, FAILOVER_SECONDS)
    assert promoted.port != victim.port
    returned = cluster.restart(victim)
    cluster.wait_healthy(FAILOVER_SECONDS)
    cluster.promote(returned, keys.META, FAILOVER_SECONDS)
    cluster.wait_healthy(FAILOVER_SECONDS)
    return killed_at


def suspensions(codes: list[str], first_seq: int) -> list[dict[str, str]]:
    return [
        period(code, f"s-{code}", 2, "2026-11-01 00:00:00", "2027-02-01 00:00:00", seq=first_seq + n, chg_rea="记分9分")
        for n, code in enumerate(codes)
    ]


@dataclass
class Traffic:
    """Claims sent one after another until told to stop; every answer kept with when it came."""

    stub: pb_grpc.GatekeeperStub
    answers: list[tuple[float, pb.CheckClaimResponse]] = field(default_factory=list)
    failures: list[grpc.RpcError] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            # Codes from 200 on: never changed by the feed, never looked up before the failover.
            request = claim(f"t{n}", COLD[100 + n % 200])
            try:
                self.answers.append((time.monotonic(), self.stub.CheckClaim(request, timeout=5)))
            except grpc.RpcError as error:
                self.failures.append(error)
            n += 1

    def degraded(self) -> list[tuple[float, pb.CheckClaimResponse]]:
        return [(at, a) for at, a in list(self.answers) if a.items[2].reason == pb.REASON_UNVERIFIED]


def test_a_master_killed_mid_traffic_fails_over_with_no_failed_rpc_and_no_wrong_decision(
    redis_cluster: RedisCluster, start_gatekeeper: StartGatekeeper, tmp_path: Path, database_url: str
) -> None:
    redis_cluster.flushall()
    load(redis_cluster.client(), registry(tmp_path))
    feed_dir = tmp_path / "feed"
    feed_dir.mkdir()
    write_changes(feed_dir / "1.jsonl", suspensions(CHANGED[:5], 501))
    feed = ChangeFeedServer(feed_dir)
    feed.start()
    options = FollowOptions(poll_seconds=0.05, backoff_initial_seconds=0.05, backoff_max_seconds=0.5)
    follower = Follower(0, feed.url, tmp_path / "q.jsonl", options, stop_within=10, client=redis_cluster.client())
    gatekeeper = start_gatekeeper(redis_url=redis_cluster.url, redis_timeout_seconds=REDIS_TIMEOUT, **COLD_START)
    traffic = Traffic(gatekeeper.stub)
    sender = threading.Thread(target=traffic.run, daemon=True)
    try:
        with redis_cluster.client() as client:
            follower.wait_for_cursor(client, 505, within=FAILOVER_SECONDS)
        sender.start()
        wait_until(lambda: len(traffic.answers) >= 20, "traffic flows")

        killed_at = fail_over(redis_cluster, lambda: write_changes(feed_dir / "2.jsonl", suspensions(CHANGED[5:], 506)))
        with redis_cluster.client() as client:
            follower.wait_for_cursor(client, 510, within=FAILOVER_SECONDS)
        after = len(traffic.answers)
        wait_until(
            lambda: (
                len(traffic.answers) >= after + 20
                and all(a.items[2].reason == pb.REASON_OK for _, a in traffic.answers[-5:])
            ),
            "claims are verified again on the promoted master",
            seconds=FAILOVER_SECONDS,
        )
    finally:
        traffic.stopping.set()
        if sender.is_alive():
            sender.join(timeout=30)
        stats = follower.stop()
        feed.stop()

    assert traffic.failures == []  # no RPC failed, before, during or after the failover
    degraded = traffic.degraded()
    assert degraded, "the failover was never noticed: nothing was decided in degraded mode"
    for _, answer in traffic.answers:
        registered, suspended, cold = answer.items
        assert registered.reason == pb.REASON_OK
        assert (suspended.verdict, suspended.reason) == (pb.VERDICT_BLOCK, pb.REASON_SUSPENDED)  # never let through
        assert cold.reason in (pb.REASON_OK, pb.REASON_UNVERIFIED)
        if cold.reason == pb.REASON_UNVERIFIED:  # marked as degraded mode marks it
            assert (cold.verdict, cold.enforced) == (pb.VERDICT_ALLOW, False)
    wait_until(
        lambda: {a.decision_id for _, a in degraded} <= {r.decision_id for r in audited(database_url)},
        "the decisions made while the slot moved are in the decision record",
    )
    # From the kill to the last claim decided without Redis: how long the service ran degraded
    # (a claim degraded before the kill, a timeout on a loaded machine, is counted apart).
    during = [at for at, _ in degraded if at >= killed_at]
    assert during, "the failover was never noticed: nothing was decided in degraded mode after the kill"
    print(
        f"\nfailover: degraded for {during[-1] - killed_at:.2f} s after the kill "
        f"({len(during)} of {len(traffic.answers)} claims; {len(degraded) - len(during)} degraded before it), "
        f"follow rode {stats.redis_errors} Redis failures"
    )

    # follow lost nothing and applied nothing twice: each change logged once, every record has it.
    with redis_cluster.client() as client:
        logged = Counter(change.seq for entry in read_change_log(client) for change in entry.changes)
        assert logged == Counter(range(501, 511))
        assert read_state(client).applied_seq == 510
    for code in CHANGED:
        answer = gatekeeper.stub.CheckClaim(claim(f"c-{code}", code), timeout=5)
        assert answer.items[2].reason == pb.REASON_SUSPENDED


def test_a_snapshot_load_cut_by_a_failover_is_refused_cleanly_and_a_rerun_finishes_it(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    redis_cluster.flushall()
    load(redis_cluster.client(), registry(tmp_path))
    rows = [period(f"D1201010{n:05d}", f"n{n}", 1, "2020-01-01 00:00:00", seq=n + 1) for n in range(5_000)]
    snapshot = write_snapshot(tmp_path, rows, snapshot_id="after-failover", watermark_seq=600, name="b.csv")
    options = SnapshotOptions(lease_seconds=1.0, force=True)  # force: the registry shrinks on purpose

    progress = PausingProgress(after_rows=2_000)
    outcome: list[BaseException | object] = []
    loading = threading.Thread(
        target=lambda: outcome.append(_load(redis_cluster.client(), snapshot, options, progress)), daemon=True
    )
    loading.start()
    assert progress.paused.wait(FAILOVER_SECONDS), "the load never started"
    fail_over(redis_cluster)
    progress.resume.set()
    loading.join(timeout=FAILOVER_SECONDS)
    assert not loading.is_alive()

    (result,) = outcome
    cut = f"refused: {result!r}" if isinstance(result, BaseException) else "completed"
    print(f"\nsnapshot load cut by a failover: {cut}")
    with redis_cluster.client() as client:
        if isinstance(result, BaseException):  # refused: readers are still on the old snapshot
            # Redis unreachable mid-load, or the lease gone by the time it was back (its 1 s ran out).
            assert isinstance(result, redis.RedisError | LeaseLost), result
            assert read_state(client).snapshot_id == "outage"
            load_snapshot(client, snapshot, options)  # waits out the cut load's lease, then loads
        state = read_state(client)
        assert (state.snapshot_id, state.record_count) == ("after-failover", 5_000)
        assert {int(g) for g in client.smembers(keys.GENERATIONS)} == {state.generation}


def _load(client: redis.Redis, path: Path, options: SnapshotOptions, progress: PausingProgress) -> object:
    try:
        return load_snapshot(client, path, options, progress=progress)
    except BaseException as error:
        return error


def test_after_a_planned_failover_the_loaders_client_reconnects_to_the_new_master(redis_cluster: RedisCluster) -> None:
    """A connection to a master that became a replica gets MOVED: that is a lost connection
    (commands report Redis unreachable, follow retries), and the next one finds the new master."""
    master = redis_cluster.master_of(keys.META)
    replica = redis_cluster.replica_of(master)
    with redis_cluster.client() as client:
        client.set(keys.FOLLOW_CURSOR, 7)
        with redis.Redis(port=master.port) as old:
            old.wait(1, 5_000)
        try:
            redis_cluster.promote(replica, keys.META, FAILOVER_SECONDS)  # planned: the old master stays up
            with pytest.raises(redis.ConnectionError, match="moved"):
                client.get(keys.FOLLOW_CURSOR)
            assert client.get(keys.FOLLOW_CURSOR) == b"7"  # from the new master
        finally:
            redis_cluster.wait_healthy(FAILOVER_SECONDS)  # the old master is linked as a replica
            redis_cluster.promote(master, keys.META, FAILOVER_SECONDS)  # give the slot back
            redis_cluster.wait_healthy(FAILOVER_SECONDS)
