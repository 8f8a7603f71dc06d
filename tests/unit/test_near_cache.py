"""The near cache's bookkeeping: fresh hits, misses, invalidation, age, bounded size."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Collection

import pytest
import redis.asyncio

from gatekeeper.cache.nearcache import NearCache
from gatekeeper.cache.store import CachingEligibilityStore
from gatekeeper.core.eligibility import Lookup, StoreStats
from gatekeeper.core.records import PractitionerRecord, StatusPeriod, decode_record, encode_record

REGISTERED = PractitionerRecord(1, (StatusPeriod(1, 1_000, 1, 1),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fetched_record_is_a_hit_and_an_unknown_code_a_cached_negative() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.put_many(["D110105000001", "D110105999999"], {"D110105000001": REGISTERED}, cache.epoch)

    found: dict[str, PractitionerRecord] = {}
    missing = cache.get_many(["D110105000001", "D110105999999", "D110105000002"], found)

    assert found == {"D110105000001": REGISTERED}
    assert missing == ["D110105000002"]  # the unknown code is known to be unknown


def test_an_invalidated_code_is_fetched_again() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    cache.invalidate(["D110105000001"])
    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]


def test_a_fetch_that_raced_an_invalidation_is_not_kept() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    epoch_before_fetch = cache.epoch
    cache.invalidate(["D110105000001"])  # a change arrives while the fetch is in flight
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, epoch_before_fetch)
    assert len(cache) == 0


def test_no_entry_is_used_after_the_maximum_age() -> None:
    clock = Clock()
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=clock)
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    clock.now += 29.9
    assert cache.get_many(["D110105000001"], {}) == []
    clock.now += 0.2
    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]


def test_the_cache_never_holds_more_than_its_maximum() -> None:
    cache = NearCache(max_entries=3, max_age_seconds=30, clock=Clock())
    codes = [f"D1101050000{n:02d}" for n in range(5)]
    for code in codes:
        cache.put_many([code], {code: REGISTERED}, cache.epoch)
    assert len(cache) == 3
    assert cache.get_many(codes, {}) == codes[:2]  # the oldest went first


def test_clear_forgets_everything() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    cache.clear()
    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]


def test_retired_entries_answer_only_degraded_lookups_within_their_bound() -> None:
    clock = Clock()
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=clock)
    cache.put_many(["D110105000001", "D110105999999"], {"D110105000001": REGISTERED}, cache.epoch)
    cache.retire()  # notifications broke off: not trusted for ordinary lookups any more

    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]
    found: dict[str, PractitionerRecord] = {}
    unverified = cache.held_many(["D110105000001", "D110105999999", "D110105000002"], found, max_age=600)
    assert found == {"D110105000001": REGISTERED}
    assert unverified == ["D110105000002"]  # known-unknown stays unknown; never fetched is unverified

    clock.now += 600.1
    assert cache.held_many(["D110105000001"], {}, max_age=600) == ["D110105000001"]


def test_a_second_retirement_keeps_what_the_first_held() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    cache.retire()
    cache.retire()  # the follower fails again while Redis stays away
    found: dict[str, PractitionerRecord] = {}
    assert cache.held_many(["D110105000001"], found, max_age=600) == []
    assert found == {"D110105000001": REGISTERED}


def test_a_snapshot_switch_drops_what_was_held() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    cache.retire()
    cache.clear()
    assert cache.held_many(["D110105000001"], {}, max_age=600) == ["D110105000001"]


def test_a_change_notification_drops_the_held_record_too() -> None:
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    cache.hold_many(["D110105000001"], {"D110105000001": REGISTERED})
    cache.invalidate(["D110105000001"])  # known to be stale: never an answer, even degraded
    assert cache.held_many(["D110105000001"], {}, max_age=600) == ["D110105000001"]


def test_held_entries_stay_within_the_maximum() -> None:
    cache = NearCache(max_entries=2, max_age_seconds=30, clock=Clock())
    cache.hold_many(["D110105000001", "D110105000002"], {})
    cache.put_many(["D110105000003"], {}, cache.epoch)
    cache.retire()
    assert cache.held_many(["D110105000001", "D110105000002", "D110105000003"], {}, max_age=600) == ["D110105000001"]


def test_live_entries_older_than_the_ordinary_bound_still_serve_degraded_lookups() -> None:
    clock = Clock()
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=clock)
    cache.put_many(["D110105000001"], {"D110105000001": REGISTERED}, cache.epoch)
    clock.now += 100  # too old for an ordinary lookup, recent enough for degraded mode
    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]
    found: dict[str, PractitionerRecord] = {}
    assert cache.held_many(["D110105000001"], found, max_age=600) == []
    assert found == {"D110105000001": REGISTERED}


def test_records_read_while_not_trusted_are_held_for_degraded_mode_only() -> None:
    cache = NearCache(max_entries=2, max_age_seconds=30, clock=Clock())
    cache.hold_many(["D110105000001", "D110105999999"], {"D110105000001": REGISTERED})
    assert cache.get_many(["D110105000001"], {}) == ["D110105000001"]  # never for ordinary lookups
    found: dict[str, PractitionerRecord] = {}
    assert cache.held_many(["D110105000001", "D110105999999"], found, max_age=600) == []
    assert found == {"D110105000001": REGISTERED}
    cache.hold_many(["D110105000002"], {})
    assert len(cache.held_many(["D110105000001", "D110105999999", "D110105000002"], {}, max_age=600)) == 1


class Replica:
    """A backing store answering as a Redis node whose data is at ``applied_seq``."""

    def __init__(self, applied_seq: int) -> None:
        self.applied_seq = applied_seq
        self.reads = 0
        self.stats = StoreStats()
        self.last_version: tuple[str, int] | None = None

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        self.reads += 1
        return Lookup({code: REGISTERED for code in codes}, "A", self.applied_seq, 1)


@pytest.mark.parametrize(("replica_seq", "reads"), [(10, 2), (11, 1), (12, 1)])
def test_a_read_from_a_replica_behind_the_notifications_is_used_once_not_kept(replica_seq: int, reads: int) -> None:
    """The worker has been told of changes up to seq 11: a replica still at 10 answers the
    claim, but what it said is not cached; one that has caught up is."""

    async def two_lookups() -> int:
        replica = Replica(replica_seq)
        store = CachingEligibilityStore(replica, redis.asyncio.Redis(), clock=Clock())  # type: ignore[arg-type]
        follower = store.follower
        follower.trusted, follower.generation, follower.seen_seq, follower.last_heard = True, 1, 11, 100.0
        for _ in range(2):
            assert (await store.lookup(["D110105000001"])).records == {"D110105000001": REGISTERED}
        return replica.reads

    assert asyncio.run(two_lookups()) == reads


def test_the_records_a_worker_holds_are_out_of_the_garbage_collectors_sight() -> None:
    # A warmed worker holds a record per practitioner (millions nationally): every pass of
    # the collector over the old generation would walk them all, pausing every RPC.
    cache = NearCache(max_entries=10, max_age_seconds=30, clock=Clock())
    record = decode_record(
        encode_record(PractitionerRecord(1, (StatusPeriod(1, 1_000, 1, 1), StatusPeriod(2, 5_000, 2, 2))))
    )
    cache.put_many(["D110105000001"], {"D110105000001": record}, cache.epoch)
    gc.collect()  # the collector stops tracking containers that hold only untracked objects
    entries = [entry for entry in gc.get_objects() if isinstance(entry, PractitionerRecord | StatusPeriod)]
    assert entries == []
    assert not gc.is_tracked(record.periods)
    assert not any(isinstance(obj, tuple) and record in obj for obj in gc.get_objects())
