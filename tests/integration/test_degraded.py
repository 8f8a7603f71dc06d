"""Degraded mode with a real Redis stopped, restarted and hung mid-traffic: no RPC fails,
nothing goes unrecorded. Each case runs on a Redis of its own and on a six-node Redis Cluster
of its own, whose cache's master and replica go down together (one of them alone is a
failover: test_failover.py)."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.core.policy import parse_policy
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import load, period, write_snapshot
from tests.integration.test_audit import audited, wait_until
from tests.integration.test_observability import scrape, value
from tests.servers import RedisCluster, RedisServer, start_cluster, start_redis

REGISTERED = "D110105000001"
SUSPENDED = "D110105000002"  # suspended [2026-11-01, 2027-02-01)
COLD = [f"D1101050{n:05d}" for n in range(100, 400)]  # registered, never looked up before the outage
SERVICE_TIME = "2026-11-20 10:00:00"
# Persistence: the eligibility data survives the restart, so that claims are verified again
# without a reload (test_audit.py restarts Redis empty). appendfsync always: nothing
# acknowledged is lost by the stop.
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")
REDIS_TIMEOUT = 0.2
# The cases below need practitioners the process has never read: a warmed near cache holds
# the whole snapshot (the last test shows what that buys in an outage).
COLD_START = {"near_cache_warm": False}


def registry(directory: Path) -> Path:
    rows = [
        period(REGISTERED, "r1", 1, "2020-01-01 00:00:00", seq=1),
        period(SUSPENDED, "r2", 1, "2020-01-01 00:00:00", seq=2),
        period(SUSPENDED, "s2", 2, "2026-11-01 00:00:00", "2027-02-01 00:00:00", seq=3, chg_rea="记分9分"),
    ]
    rows += [period(code, f"c{n}", 1, "2020-01-01 00:00:00", seq=10 + n) for n, code in enumerate(COLD)]
    return write_snapshot(directory, rows, snapshot_id="outage", watermark_seq=500)


def claim(claim_id: str, cold: str, fixmedins_code: str = "H41130200746") -> pb.CheckClaimRequest:
    def line(sn: str, code: str) -> pb.LineItem:
        return pb.LineItem(feedetl_sn=sn, fee_ocur_time=SERVICE_TIME, bilg_dr_codg=code, amount_fen=100)

    items = [line("1", REGISTERED), line("2", SUSPENDED), line("3", cold)]
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code=fixmedins_code, items=items)


@dataclass
class Cache:
    """The Redis a test's gatekeeper reads, to be stopped, restarted and hung: one server, or
    in a cluster the master holding the cache and its replica, together."""

    url: str
    holders: list[RedisServer]
    directory: Path
    cluster: RedisCluster | None = None

    def client(self) -> redis.Redis:
        return self.holders[0].client() if self.cluster is None else self.cluster.client()

    def stop(self) -> None:
        for server in reversed(self.holders):  # a cluster's replica first: no failover to it
            server.stop()

    def restart(self) -> None:
        """Start what was stopped again, on its ports and files: the data survives (PERSISTENT)."""
        if self.cluster is None:
            self.holders = [start_redis(self.directory, self.holders[0].port, extra_args=PERSISTENT)]
            return
        self.holders = [self.cluster.restart(server) for server in self.holders]  # the master first
        self.cluster.wait_healthy()

    def hang(self) -> None:
        """Connections are accepted, nothing is answered."""
        for server in self.holders:
            os.kill(server.process.pid, signal.SIGSTOP)

    def answer_again(self) -> None:
        for server in self.holders:
            os.kill(server.process.pid, signal.SIGCONT)


@pytest.fixture(params=["single", "cluster"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cache]:
    """A Redis, or a Redis Cluster, of this test's own (the session's are shared), loaded with the registry."""
    directory = tmp_path / "redis"
    directory.mkdir()
    if request.param == "single":
        server = start_redis(directory, extra_args=PERSISTENT)
        own = Cache(server.url, [server], directory)
    else:
        cluster = start_cluster(directory, extra_args=PERSISTENT)
        master = cluster.master_of(keys.META)
        own = Cache(cluster.url, [master, cluster.replica_of(master)], directory, cluster)
    load(own.client(), registry(tmp_path))
    if own.cluster is not None:
        with redis.Redis(port=own.holders[0].port) as master_client:
            master_client.wait(1, 5_000)  # the replica holds the registry too before anything fails
    yield own
    if own.cluster is not None:
        own.cluster.stop()
    else:
        own.holders[0].stop()


@dataclass
class Traffic:
    """Claims sent one after another from a thread until told to stop, every answer kept."""

    stub: pb_grpc.GatekeeperStub
    answers: list[pb.CheckClaimResponse] = field(default_factory=list)
    failures: list[grpc.RpcError] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            try:
                self.answers.append(self.stub.CheckClaim(claim(f"t{n}", COLD[n % len(COLD)]), timeout=5))
            except grpc.RpcError as error:
                self.failures.append(error)
            n += 1

    def degraded(self) -> list[pb.CheckClaimResponse]:
        return [a for a in list(self.answers) if a.items[2].reason == pb.REASON_UNVERIFIED]


def test_redis_stopped_and_restarted_mid_traffic(
    start_gatekeeper: StartGatekeeper, cache: Cache, tmp_path: Path, database_url: str
) -> None:
    spool_dir = tmp_path / "spool"
    gatekeeper = start_gatekeeper(
        redis_url=cache.url, redis_timeout_seconds=REDIS_TIMEOUT, audit_spool_dir=spool_dir, **COLD_START
    )
    warm = gatekeeper.stub.CheckClaim(claim("warm", COLD[0]), timeout=5)  # REGISTERED and SUSPENDED now held
    assert [i.reason for i in warm.items] == [pb.REASON_OK, pb.REASON_SUSPENDED, pb.REASON_OK]

    traffic = Traffic(gatekeeper.stub)
    sender = threading.Thread(target=traffic.run, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(traffic.answers) >= 20, "traffic flows")
        cache.stop()
        wait_until(lambda: len(traffic.degraded()) >= 20, "claims are decided in degraded mode")
        outage = {a.decision_id for a in traffic.degraded()[:20]}
        wait_until(
            lambda: outage <= {r.decision_id for r in audited(database_url)},
            "decisions made during the outage are recorded (the record does not need Redis)",
        )

        cache.restart()
        recovered = len(traffic.answers)
        wait_until(
            lambda: any(a.items[2].reason == pb.REASON_OK for a in traffic.answers[recovered:]),
            "claims are verified again once Redis is back",
        )
        after = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) >= after + 20, "traffic flows after recovery")
    finally:
        traffic.stopping.set()
        sender.join(timeout=30)

    assert traffic.failures == []  # no RPC failed, before, during or after the outage
    degraded = traffic.degraded()
    for answer in degraded:
        registered, suspended, cold = answer.items
        assert (cold.verdict, cold.enforced) == (pb.VERDICT_ALLOW, False)  # settled unverified
        assert registered.reason == pb.REASON_OK  # from the record the process held
        assert (suspended.verdict, suspended.reason) == (pb.VERDICT_BLOCK, pb.REASON_SUSPENDED)  # still barred
        assert answer.registry_version == "outage@500"

    every = [warm, *traffic.answers]
    wanted = {a.decision_id for a in every}
    wait_until(
        lambda: wanted <= {r.decision_id for r in audited(database_url)},
        "every decision is in the record",
        seconds=30,
    )
    stored = audited(database_url)
    assert Counter(r.decision_id for r in stored) == Counter(wanted)  # each exactly once, nothing else
    by_id = {r.decision_id: r for r in stored}
    for answer in degraded:
        cold = by_id[answer.decision_id].items[2]
        assert (cold.reason, cold.verdict, cold.enforced) == ("UNVERIFIED", "ALLOW", False)


# Region 41 blocks what it cannot check; region 11 settles up to 2 unverified items a
# minute per institution (stand-in), then blocks.
POLICY = parse_policy({"regions": {"41": {"unverified": "block"}, "11": {"stand_in_per_minute": 2}}})


def test_the_region_policy_decides_what_cannot_be_checked(start_gatekeeper: StartGatekeeper, cache: Cache) -> None:
    gatekeeper = start_gatekeeper(redis_url=cache.url, redis_timeout_seconds=REDIS_TIMEOUT, policy=POLICY, **COLD_START)
    gatekeeper.stub.CheckClaim(claim("warm", COLD[0]), timeout=5)
    cache.stop()

    blocking = gatekeeper.stub.CheckClaim(claim("b", COLD[1], fixmedins_code="H41130200746"), timeout=5)
    assert (blocking.items[2].verdict, blocking.items[2].reason) == (pb.VERDICT_BLOCK, pb.REASON_UNVERIFIED)
    assert blocking.items[2].enforced and blocking.verdict == pb.CLAIM_VERDICT_PARTIAL

    standing_in = [
        gatekeeper.stub.CheckClaim(claim(f"s{n}", COLD[10 + n], fixmedins_code="H11010500001"), timeout=5).items[2]
        for n in range(4)
    ]
    assert [(i.verdict, i.reason) for i in standing_in] == [(pb.VERDICT_ALLOW, pb.REASON_UNVERIFIED)] * 2 + [
        (pb.VERDICT_BLOCK, pb.REASON_UNVERIFIED)
    ] * 2
    other = gatekeeper.stub.CheckClaim(claim("o", COLD[20], fixmedins_code="H11010500002"), timeout=5)
    assert other.items[2].verdict == pb.VERDICT_ALLOW  # the limit is per institution

    # The practitioner query has no unverified answer: it says to retry.
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code=COLD[9]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_hung_redis_holds_a_claim_no_longer_than_the_redis_timeout(
    start_gatekeeper: StartGatekeeper, cache: Cache
) -> None:
    gatekeeper = start_gatekeeper(redis_url=cache.url, redis_timeout_seconds=REDIS_TIMEOUT, **COLD_START)
    gatekeeper.stub.CheckClaim(claim("warm", COLD[0]), timeout=5)
    cache.hang()
    try:
        # A deadline a few Redis timeouts long: a client retrying a hung Redis would miss it.
        hung = [gatekeeper.stub.CheckClaim(claim(f"h{n}", COLD[n + 1]), timeout=4 * REDIS_TIMEOUT) for n in range(3)]
    finally:
        cache.answer_again()
    assert [a.items[2].reason for a in hung] == [pb.REASON_UNVERIFIED] * 3
    assert [a.items[1].reason for a in hung] == [pb.REASON_SUSPENDED] * 3

    def verified() -> bool:
        return gatekeeper.stub.CheckClaim(claim("back", COLD[50]), timeout=5).items[2].reason == pb.REASON_OK

    wait_until(verified, "claims are verified again once Redis answers")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({"near_cache_entries": 0}, "unverified", id="without_a_near_cache_every_code_is_unverified"),
        pytest.param({"degraded_max_age_seconds": 0}, "unavailable", id="degraded_mode_off_is_unavailable"),
    ],
)
def test_degraded_mode_without_held_records_or_turned_off(
    start_gatekeeper: StartGatekeeper, cache: Cache, settings: dict[str, float], expected: str
) -> None:
    gatekeeper = start_gatekeeper(redis_url=cache.url, redis_timeout_seconds=REDIS_TIMEOUT, **COLD_START, **settings)
    gatekeeper.stub.CheckClaim(claim("warm", COLD[0]), timeout=5)
    cache.stop()
    if expected == "unavailable":
        with pytest.raises(grpc.RpcError) as raised:
            gatekeeper.stub.CheckClaim(claim("down", COLD[0]), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        answer = gatekeeper.stub.CheckClaim(claim("down", COLD[0]), timeout=5)
        assert [i.reason for i in answer.items] == [pb.REASON_UNVERIFIED] * 3
        assert answer.registry_version == "outage@500"  # the last version this process read


def test_a_warmed_near_cache_decides_every_practitioner_of_the_snapshot_through_an_outage(
    start_gatekeeper: StartGatekeeper, cache: Cache
) -> None:
    gatekeeper = start_gatekeeper(
        redis_url=cache.url, redis_timeout_seconds=REDIS_TIMEOUT, metrics_listen="127.0.0.1:0"
    )
    port = gatekeeper.metrics_port
    assert port is not None
    probes = iter(COLD[:200])

    def misses() -> float:
        return value(scrape(port), "gatekeeper_near_cache_lookups_total", result="miss")

    def warmed() -> bool:
        """A claim naming a practitioner never asked for is answered without reading Redis."""
        before = misses()
        gatekeeper.stub.CheckClaim(claim("probe", next(probes)), timeout=5)
        return misses() == before

    wait_until(warmed, "the near cache is warmed from the snapshot")
    cache.stop()
    answers = [gatekeeper.stub.CheckClaim(claim(f"o{n}", code), timeout=5) for n, code in enumerate(COLD[-20:])]
    assert [[i.reason for i in a.items] for a in answers] == [[pb.REASON_OK, pb.REASON_SUSPENDED, pb.REASON_OK]] * 20
    assert all(a.items[2].enforced for a in answers)  # checked against the record held, not stood in for
