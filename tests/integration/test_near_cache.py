"""The near cache stays coherent with Redis: changes, switches, lost notifications, max age."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis

from gatekeeper.cache.client import redis_client
from gatekeeper.cache.follower import STREAM_CLIENT_NAME
from gatekeeper.cache.store import CachingEligibilityStore, RedisEligibilityStore
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.rules import Reason, standing_at
from gatekeeper.v1 import gatekeeper_pb2 as pb
from loader.cache import ApplyStats, ChangeApplier
from loader.rows import encode_change
from tests.integration.conftest import StartGatekeeper, on_both_redis
from tests.integration.registry import load, period, write_snapshot
from tests.servers import RedisServer

pytestmark = on_both_redis  # the core cases run against one Redis and the Redis Cluster

CODE = "D110105000001"
SERVICE_TIME = "2026-11-20 10:00:00"
POLL_SECONDS = 10.0  # bounds every wait below; coherence is expected within a second


def registry(directory: Path, snapshot_id: str = "A", seq: int = 100) -> Path:
    rows = [period(CODE, "r1", 1, "2020-01-01 00:00:00", seq=1)]
    rows += [period(f"D1101050{n:05d}", f"x{n}", 1, "2020-01-01 00:00:00", seq=1 + n) for n in range(2, 60)]
    return write_snapshot(directory, rows, snapshot_id=snapshot_id, watermark_seq=seq, name=f"{snapshot_id}.csv")


def suspend(client: redis.Redis, seq: int, code: str = CODE) -> None:
    change = period(code, f"s{seq}", 2, "2026-11-01 00:00:00", "2027-02-01 00:00:00", seq=seq, chg_rea="记分9分")
    ChangeApplier(client).apply([encode_change(change)], ApplyStats())


def reason(lookup_records: dict, code: str = CODE) -> Reason:  # type: ignore[type-arg]
    return standing_at(lookup_records.get(code), parse_cst(SERVICE_TIME)).reason


async def started(
    url: str,
    max_age_seconds: float = 30.0,
    clock: Callable[[], float] | None = None,
    name: str = STREAM_CLIENT_NAME,
    warm: bool = False,
    on_warmed: Callable[[], None] | None = None,
) -> CachingEligibilityStore:
    """A caching store that has caught up; not warmed unless asked (most cases here are about
    what a lookup fetches)."""
    backing = RedisEligibilityStore.from_url(url)
    stream = redis_client(url, None, client_name=name)
    clocked = {"clock": clock} if clock else {}
    store = CachingEligibilityStore(backing, stream, 1000, max_age_seconds, warm=warm, on_warmed=on_warmed, **clocked)
    store.start()
    await asyncio.wait_for(store.caught_up.wait(), POLL_SECONDS)
    return store


async def until(condition: Callable[[], object], what: str) -> None:
    """Poll a condition, sync or async, with a bound (no fixed sleeps as synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + POLL_SECONDS
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def test_a_change_applied_by_the_loader_is_seen_by_every_worker(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))

    async def scenario() -> None:
        workers = [await started(redis_server.url) for _ in range(2)]
        for worker in workers:  # warm: the registration is now cached in each
            assert reason((await worker.lookup([CODE])).records) is Reason.OK
            assert reason((await worker.lookup([CODE])).records) is Reason.OK
            assert worker.stats.hits == 1
        await asyncio.to_thread(suspend, redis_client, 500)
        for worker in workers:

            async def suspended(worker: CachingEligibilityStore = worker) -> bool:
                return reason((await worker.lookup([CODE])).records) is Reason.SUSPENDED

            await until(suspended, "every worker enforces the suspension")
            lookup = await worker.lookup([CODE])
            assert lookup.registry_version == "A@500"
            assert worker.stats.invalidations >= 1
            await worker.close()

    asyncio.run(scenario())


def test_a_dropped_notification_connection_drops_the_cache(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))

    async def scenario() -> None:
        store = await started(redis_server.url, name="near-cache-under-test")
        assert reason((await store.lookup([CODE])).records) is Reason.OK
        clears = store.stats.clears
        followers = [c for c in redis_client.client_list() if c["name"] == "near-cache-under-test"]
        assert followers  # a cluster client may hold a second one, from learning the slot map
        for follower in followers:
            redis_client.client_kill_filter(_id=follower["id"])
        await until(lambda: store.stats.clears > clears, "the follower notices the lost connection")
        await asyncio.to_thread(suspend, redis_client, 500)
        # Distrusted (reading through) or caught up again: either way the suspension is enforced.
        assert reason((await store.lookup([CODE])).records) is Reason.SUSPENDED
        await store.close()

    asyncio.run(scenario())


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_notification_failure_never_keeps_a_stale_allow_beyond_the_maximum_age(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    clock = Clock()

    async def scenario() -> None:
        store = await started(redis_server.url, max_age_seconds=5.0, clock=clock)
        assert reason((await store.lookup([CODE])).records) is Reason.OK
        assert store.follower._task is not None
        store.follower._task.cancel()  # notifications stop arriving, and nothing says so
        await asyncio.to_thread(suspend, redis_client, 500)
        clock.now += 4.9
        assert reason((await store.lookup([CODE])).records) is Reason.OK  # stale, but within the bound
        clock.now += 0.2
        assert reason((await store.lookup([CODE])).records) is Reason.SUSPENDED
        await store.close()

    asyncio.run(scenario())


def test_a_snapshot_switch_drops_everything(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))

    async def scenario() -> None:
        store = await started(redis_server.url)
        assert reason((await store.lookup([CODE])).records) is Reason.OK
        rows = [
            period(CODE, "r1", 1, "2020-01-01 00:00:00", seq=1),
            period(CODE, "t1", 3, "2026-06-01 00:00:00", seq=900, chg_rea="记满12分"),
        ]
        rows += [period(f"D1101050{n:05d}", f"x{n}", 1, "2020-01-01 00:00:00", seq=1 + n) for n in range(2, 60)]
        await asyncio.to_thread(load, redis_client, write_snapshot(tmp_path, rows, snapshot_id="B", name="b.csv"))

        async def switched() -> bool:
            lookup = await store.lookup([CODE])
            return lookup.registry_version == "B@900" and reason(lookup.records) is Reason.TERMINATED

        await until(switched, "the near cache follows the switch")
        await store.close()

    asyncio.run(scenario())


def test_the_near_cache_is_warmed_from_each_snapshot_and_answers_the_first_lookup(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    everyone = [CODE] + [f"D1101050{n:05d}" for n in range(2, 60)]

    warmings: list[int] = []  # the worker freezes its heap each time (server._serve_one)

    async def scenario() -> None:
        store = await started(redis_server.url, warm=True, on_warmed=lambda: warmings.append(len(store.cache)))
        await until(lambda: len(warmings) == 1, "the snapshot is warmed")
        assert warmings == [len(everyone)]  # told once the whole snapshot is in the cache
        before = (store.stats.hits, store.stats.misses)
        lookup = await store.lookup(everyone)  # never asked for before
        assert len(lookup.records) == len(everyone)
        assert (store.stats.hits - before[0], store.stats.misses - before[1]) == (len(everyone), 0)

        # A change after warming is seen (notifications keep the warmed entries coherent) ...
        await asyncio.to_thread(suspend, redis_client, 500)
        await until(
            lambda: CODE not in store.cache._entries,
            "the change's notification drops the warmed entry",
        )
        assert reason((await store.lookup([CODE])).records) is Reason.SUSPENDED

        # ... and a new snapshot is warmed in its turn.
        rows = [period(CODE, "t1", 3, "2026-06-01 00:00:00", seq=900, chg_rea="记满12分")]
        rows += [period(f"D1101050{n:05d}", f"y{n}", 1, "2021-01-01 00:00:00", seq=1 + n) for n in range(2, 60)]
        snapshot = write_snapshot(tmp_path, rows, snapshot_id="B", watermark_seq=1000, name="b.csv")
        first = store.follower.generation
        await asyncio.to_thread(load, redis_client, snapshot)
        await until(
            lambda: store.follower.generation != first and store.warmed_generation == store.follower.generation,
            "the new snapshot is followed and warmed",
        )
        assert len(store.cache) == len(rows)
        assert warmings == [len(everyone), len(rows)]
        before = (store.stats.hits, store.stats.misses)
        assert reason((await store.lookup([CODE])).records) is Reason.TERMINATED
        assert (store.stats.hits - before[0], store.stats.misses - before[1]) == (1, 0)
        await store.close()

    asyncio.run(scenario())


def claim(claim_id: str = "c1", version: str = "", code: str = CODE) -> pb.CheckClaimRequest:
    item = pb.LineItem(feedetl_sn="1", fee_ocur_time=SERVICE_TIME, bilg_dr_codg=code, amount_fen=100)
    return pb.CheckClaimRequest(
        claim_id=claim_id, fixmedins_code="H11010500001", items=[item], min_registry_version=version
    )


def test_freshness_on_demand_never_answers_from_older_data(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    gatekeeper = start_gatekeeper()
    first = gatekeeper.stub.CheckClaim(claim(), timeout=5)
    assert first.registry_version == "A@100"

    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(claim(version="A@500"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "500" in raised.value.details()

    suspend(redis_client, 500)
    # Right after the loader applied it: the demanded version is honoured at once, even if
    # the worker's notification has not arrived yet.
    fresh = gatekeeper.stub.CheckClaim(claim(version="A@500"), timeout=5)
    assert fresh.items[0].reason == pb.REASON_SUSPENDED
    assert fresh.registry_version.endswith("@500")

    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(claim(version="yesterday"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("min_registry_version:")


def test_the_batch_api_decides_each_claim_like_check_claim(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    suspend(redis_client, 500, code="D110105000002")
    gatekeeper = start_gatekeeper()
    good, suspended = claim("good"), claim("suspended", code="D110105000002")
    bad = claim("bad")
    bad.items[0].fee_ocur_time = "yesterday"
    too_new = claim("too-new", version="A@9999")

    batch = gatekeeper.stub.CheckClaims(pb.CheckClaimsRequest(claims=[good, bad, suspended, too_new]), timeout=5)

    assert [r.claim_id for r in batch.results] == ["good", "bad", "suspended", "too-new"]
    assert [r.WhichOneof("result") for r in batch.results] == ["response", "error", "response", "error"]
    assert batch.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert batch.results[1].error.message.startswith("items[0].fee_ocur_time:")
    assert batch.results[3].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    for result, single in ((batch.results[0], good), (batch.results[2], suspended)):
        alone = gatekeeper.stub.CheckClaim(single, timeout=5)
        assert result.response.verdict == alone.verdict
        assert [(i.verdict, i.reason, i.prac_psn_code) for i in result.response.items] == [
            (i.verdict, i.reason, i.prac_psn_code) for i in alone.items
        ]
    assert batch.results[2].response.items[0].reason == pb.REASON_SUSPENDED

    small_batches = start_gatekeeper(max_batch_claims=2)
    with pytest.raises(grpc.RpcError) as raised:
        small_batches.stub.CheckClaims(pb.CheckClaimsRequest(claims=[good] * 3), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("claims:")


def test_a_switch_not_yet_followed_never_mixes_two_snapshots(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    other = "D110105000002"  # registered in A, suspended in B; CODE the other way round
    load(redis_client, registry(tmp_path))

    async def scenario() -> None:
        store = await started(redis_server.url)
        assert reason((await store.lookup([CODE])).records) is Reason.OK  # CODE cached from A
        assert store.follower._task is not None
        store.follower._task.cancel()  # the follower stalls: it will not see the switch
        rows = [
            period(CODE, "r1", 1, "2020-01-01 00:00:00", seq=1),
            period(CODE, "t1", 3, "2026-06-01 00:00:00", seq=900, chg_rea="记满12分"),
            period(other, "r2", 1, "2020-01-01 00:00:00", seq=2),
            period(other, "s2", 2, "2026-06-01 00:00:00", seq=901, chg_rea="记分9分"),
        ]
        rows += [period(f"D1101050{n:05d}", f"x{n}", 1, "2020-01-01 00:00:00", seq=1 + n) for n in range(3, 60)]
        await asyncio.to_thread(load, redis_client, write_snapshot(tmp_path, rows, snapshot_id="B", name="b.csv"))
        lookup = await store.lookup([CODE, other])  # CODE is cached from A, other must be fetched
        reasons = (reason(lookup.records), reason(lookup.records, other))
        assert reasons == (Reason.TERMINATED, Reason.SUSPENDED)  # both from B, nothing from A
        assert lookup.registry_version == "B@901"
        await store.close()

    asyncio.run(scenario())
