"""The eligibility stores: Redis read with one pipelined round trip per claim, and the
near cache in front of it.

Coherence of the near cache (docs/cache-layout.md): each change entry drops the codes it
names, and a switch entry drops everything; a follower that lost its connection, or finds
that entries it never read were trimmed, drops everything and lookups read through to Redis
until it has caught up again; no entry is used after ``max_age_seconds``.

Degraded mode: when Redis cannot be read, what the process holds (entries of the live
cache, and those it stopped trusting when notifications broke off) answers for up to
``degraded_max_age_seconds`` after each was fetched; other codes come back unverified.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection

import msgspec

from gatekeeper import defaults
from gatekeeper.cache import keys
from gatekeeper.cache.client import REDIS_FAILURES, AsyncClient, redis_client
from gatekeeper.cache.follower import BLOCK_MILLISECONDS, STREAM_CLIENT_NAME, ChangeFollower
from gatekeeper.cache.layout import READ_FIELDS, Meta
from gatekeeper.cache.nearcache import NearCache
from gatekeeper.core.eligibility import Lookup, StoreStats
from gatekeeper.core.errors import CacheCorrupt, CacheUnavailable, NeverRead, RegistryBehind, RegistryNotLoaded
from gatekeeper.core.records import PractitionerRecord, decode_record
from gatekeeper.ops.tasks import stop_task

log = logging.getLogger(__name__)
SENTINEL = keys.BUCKET_SENTINEL.encode()
# Warming reads this many buckets (about 64 practitioners each) per round trip.
WARM_BUCKETS_PER_READ = 64
WARM_POLL_SECONDS = 1.0  # how often the warmer looks for a new snapshot to warm from
WARM_ATTEMPTS = 3  # reads of one range of buckets that invalidations may overtake before the warmer waits

# A snapshot switch between reading {gk}:meta and reading the buckets makes a reader read
# again; more than this many switches in a row (snapshots load minutes apart) means
# something is wrong.
MAX_READ_ATTEMPTS = 10
# What CLIENT LIST calls the connections lookups read on (with replica reads: those that read
# the replicas, and those that read the masters for a minimum registry version).
LOOKUP_CLIENT_NAME = "gatekeeper-lookups"
FRESH_LOOKUP_CLIENT_NAME = "gatekeeper-lookups-fresh"


def _loaded(meta: Meta) -> Meta:
    if meta.generation is None:
        raise RegistryNotLoaded()
    return meta


class RedisEligibilityStore:
    """Reads records with one pipelined round trip per claim: the meta hash, then one
    HMGET per bucket the claim's codes fall in (see docs/cache-layout.md).

    How long a hung Redis can hold a lookup is up to the client's timeouts (see
    :func:`redis_client`: one timeout per command, no retries). With ``degraded`` an
    unreadable cache makes every code unverified (this store holds no records) instead of
    raising CacheUnavailable; the near cache (nearcache.py) does better.
    """

    def __init__(
        self,
        client: AsyncClient,
        degraded: bool = False,
        stats: StoreStats | None = None,
        fresh_client: AsyncClient | None = None,
    ) -> None:
        self._redis = client
        # With replica reads, the masters' client: a lookup asking for a minimum registry
        # version reads there, never from a replica that may not have caught up.
        self._fresh = fresh_client
        self._meta: Meta | None = None  # the generation read last
        self._degraded = degraded
        # Of the last lookup that read Redis: what degraded answers show. None: no registry
        # data read since start, so nothing to stand in for.
        self.last_version: tuple[str, int] | None = None
        self.stats = StoreStats() if stats is None else stats

    @classmethod
    def from_url(
        cls, url: str, timeout_seconds: float | None = None, degraded: bool = False, replica_reads: bool = False
    ) -> RedisEligibilityStore:
        """A store on a new connection pool for ``url``; ``timeout_seconds`` bounds each command.
        With ``replica_reads`` (a cluster URL) lookups read the replicas, except those that
        ask for a minimum registry version."""
        if not replica_reads:
            return cls(redis_client(url, timeout_seconds, client_name=LOOKUP_CLIENT_NAME), degraded)
        replicas = redis_client(url, timeout_seconds, replica_reads=True, client_name=LOOKUP_CLIENT_NAME)
        fresh = redis_client(url, timeout_seconds, client_name=FRESH_LOOKUP_CLIENT_NAME)
        return cls(replicas, degraded, fresh_client=fresh)

    def start(self) -> None:
        pass  # nothing runs in the background

    def notification_lags_ms(self) -> list[float]:
        return []

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        try:
            try:
                lookup = await self._read(codes, min_seq)
            except RegistryNotLoaded as error:
                if self.last_version is None:
                    raise
                # It had a registry: Redis lost it (restarted empty), and the loader will load
                # one again. Meanwhile this is an outage like any other: degraded mode.
                self._meta = None
                raise CacheUnavailable(f"the registry snapshot is gone from the cache ({error})") from error
        except CacheUnavailable as error:
            if self.last_version is None:
                raise NeverRead(error) from error
            snapshot_id, applied_seq = self.last_version
            if not self._degraded or min_seq > applied_seq:
                raise
            self.stats.degraded_lookups += 1
            self.stats.unverified += len(codes)
            return Lookup({}, snapshot_id, applied_seq, unverified=frozenset(codes))
        self.last_version = (lookup.snapshot_id, lookup.applied_seq)
        return lookup

    async def _read(self, codes: Collection[str], min_seq: int) -> Lookup:
        client = self._fresh if min_seq and self._fresh is not None else self._redis
        try:
            for _ in range(MAX_READ_ATTEMPTS):
                if self._meta is None:
                    self._meta = _loaded(Meta.from_read(await client.hmget(keys.META, READ_FIELDS)))  # type: ignore[arg-type]
                expected = self._meta
                generation, buckets = expected.generation, expected.buckets
                assert generation is not None
                by_bucket: dict[int, list[str]] = defaultdict(list)
                for code in codes:
                    by_bucket[keys.bucket_of(code, buckets)].append(code)
                pipe = client.pipeline(transaction=False)
                pipe.hmget(keys.META, READ_FIELDS)
                for bucket, bucket_codes in by_bucket.items():
                    pipe.hmget(keys.bucket_key(generation, bucket), keys.BUCKET_SENTINEL, *bucket_codes)
                values, *bucket_values = await pipe.execute()
                meta = _loaded(Meta.from_read(values))
                if (meta.generation, meta.buckets) != (generation, buckets) or any(
                    found[0] is None for found in bucket_values
                ):
                    # The snapshot switched under us: read again from the new generation.
                    self._meta = meta if meta.generation != generation else None
                    continue
                self._meta = meta
                if meta.applied_seq < min_seq:
                    raise RegistryBehind(min_seq, meta.applied_seq)
                records = {}
                for bucket_codes, found in zip(by_bucket.values(), bucket_values, strict=True):
                    for code, value in zip(bucket_codes, found[1:], strict=True):
                        if value is not None:
                            records[code] = decode_record(value)
                return Lookup(records, meta.snapshot_id, meta.applied_seq, generation)
        except REDIS_FAILURES as error:
            self.stats.redis_error("lookup")
            raise CacheUnavailable(f"eligibility cache unavailable: {error}") from error
        except msgspec.DecodeError as error:
            raise CacheCorrupt(f"eligibility cache holds an undecodable record: {error}") from error
        raise CacheUnavailable("the registry snapshot kept switching during the read")

    async def read_buckets(self, generation: int, buckets: range) -> tuple[Meta, dict[str, PractitionerRecord]]:
        """Every record in ``buckets`` of ``generation``, and {gk}:meta as read with them (in
        one round trip): the caller checks that the generation is still the one read."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.META, READ_FIELDS)
        for bucket in buckets:
            pipe.hgetall(keys.bucket_key(generation, bucket))
        try:
            values, *contents = await pipe.execute()
            records = {
                code.decode(): decode_record(value)
                for content in contents
                for code, value in content.items()
                if code != SENTINEL
            }
        except REDIS_FAILURES as error:
            self.stats.redis_error("warm")
            raise CacheUnavailable(f"eligibility cache unavailable: {error}") from error
        except msgspec.DecodeError as error:
            raise CacheCorrupt(f"eligibility cache holds an undecodable record: {error}") from error
        meta = Meta.from_read(values)
        if meta.generation is not None and meta.snapshot_id is not None:
            self.last_version = (meta.snapshot_id, meta.applied_seq)  # a registry was read: one to stand in for
        return meta, records

    async def registry_updated_at(self) -> float | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.META, [keys.MetaField.GENERATION, keys.MetaField.SWITCHED_AT])
        pipe.xrevrange(keys.CHANGES, count=1)
        try:
            (generation, switched_at), latest = await pipe.execute()
        except REDIS_FAILURES as error:
            self.stats.redis_error("health")
            raise CacheUnavailable(str(error)) from error
        if generation is None:
            return None
        # A stream entry id starts with the Redis server's clock in milliseconds.
        changed_at = int(latest[0][0].split(b"-")[0]) / 1000 if latest else 0.0
        return max(float(switched_at or 0), changed_at)

    async def close(self) -> None:
        await self._redis.aclose()
        if self._fresh is not None:
            await self._fresh.aclose()


class CachingEligibilityStore:
    """An EligibilityStore that answers from the near cache and reads only misses from Redis;
    a :class:`ChangeFollower` keeps the cache coherent."""

    def __init__(
        self,
        backing: RedisEligibilityStore,
        stream_client: AsyncClient,
        max_entries: int = defaults.NEAR_CACHE_ENTRIES,
        max_age_seconds: float = defaults.NEAR_CACHE_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        degraded_max_age_seconds: float = 0.0,
        warm: bool = True,
        on_warmed: Callable[[], None] | None = None,
    ) -> None:
        self._backing = backing
        self._warm = warm  # fill the near cache from each snapshot (bounded by max_entries)
        self._on_warmed = on_warmed  # called each time a snapshot has been warmed from
        self.degraded_max_age_seconds = degraded_max_age_seconds  # 0: no degraded mode
        self.degraded = False  # the last read of Redis failed
        self.cache = NearCache(max_entries, max_age_seconds, clock)
        self.stats = backing.stats  # one set of counters for the store and its backing
        self.follower = ChangeFollower(stream_client, self.cache, self.stats, clock=clock)
        self.warmed_generation = 0  # the last snapshot the near cache was filled from
        self._warmer: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        max_entries: int,
        max_age_seconds: float,
        timeout_seconds: float | None = None,
        degraded_max_age_seconds: float = 0.0,
        replica_reads: bool = False,
        warm: bool = True,
        on_warmed: Callable[[], None] | None = None,
    ) -> CachingEligibilityStore:
        """A caching store over Redis at ``url``; the stream reader has its own connection,
        whose reads wait out XREAD's BLOCK before they time out. The stream is read from the
        master even with ``replica_reads``: a notification never comes from a replica."""
        backing = RedisEligibilityStore.from_url(url, timeout_seconds, replica_reads=replica_reads)
        read_timeout = None if timeout_seconds is None else timeout_seconds + BLOCK_MILLISECONDS / 1000
        stream = redis_client(url, timeout_seconds, read_timeout, client_name=STREAM_CLIENT_NAME)
        return cls(
            backing,
            stream,
            max_entries,
            max_age_seconds,
            degraded_max_age_seconds=degraded_max_age_seconds,
            warm=warm,
            on_warmed=on_warmed,
        )

    @property
    def caught_up(self) -> asyncio.Event:
        """Set while the follower has caught up and the cache answers lookups."""
        return self.follower.caught_up

    def start(self) -> None:
        self.follower.start()
        if self._warm and self._warmer is None:
            self._warmer = asyncio.create_task(self._warm_each_snapshot(), name="near-cache-warmer")

    def notification_lags_ms(self) -> list[float]:
        return self.follower.take_lags_ms()

    async def _warm_each_snapshot(self) -> None:
        """Fill the near cache from each snapshot the follower reaches (at start, and after
        every switch, which empties it), so that a worker answers from memory from the first
        claim rather than after it has seen every practitioner once (with a Zipf law of use,
        a long time: the rarely seen make up much of the claims)."""
        while True:
            await self.follower.caught_up.wait()
            generation = self.follower.generation
            if generation and generation != self.warmed_generation:
                try:
                    added = await self.warm(generation)
                except CacheUnavailable as error:  # lookups read through meanwhile; tried again later
                    log.warning("near cache: not warmed from snapshot %d yet: %s", generation, error)
                except Exception:  # a bug or a corrupt record: lookups read through; tried again later
                    log.exception("near cache: warming from snapshot %d failed", generation)
                else:
                    if added is not None:
                        self.warmed_generation = generation
                        log.info("near cache: warmed with %d practitioners of snapshot %d", added, generation)
                        if self._on_warmed is not None:
                            self._on_warmed()
            await asyncio.sleep(WARM_POLL_SECONDS)

    async def warm(self, generation: int) -> int | None:
        """Read ``generation``'s records into the near cache, bucket by bucket, until it is
        full; how many were added, or None when it could not finish (a switch, notifications
        lost, or reads overtaken by invalidations time and again: tried again later). A read
        that an invalidation or a lagging replica overtook is dropped, as a lookup's would be
        (put_many's epoch), and read again."""
        follower, cache = self.follower, self.cache
        meta, _ = await self._backing.read_buckets(generation, range(0))
        if meta.generation != generation:
            return None
        added = 0
        for first in range(0, meta.buckets, WARM_BUCKETS_PER_READ):
            if len(cache) >= cache.max_entries:
                break
            buckets = range(first, min(first + WARM_BUCKETS_PER_READ, meta.buckets))
            for _ in range(WARM_ATTEMPTS):
                if follower.generation != generation or not follower.trusted:
                    return None
                epoch = cache.epoch
                read, records = await self._backing.read_buckets(generation, buckets)
                if read.generation != generation:
                    return None
                if read.applied_seq >= follower.seen_seq and cache.epoch == epoch:
                    cache.put_many(records, records, epoch)
                    added += len(records)
                    break
            else:
                return None
        return added

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        try:
            lookup = await self._lookup(codes, min_seq)
        except CacheUnavailable as error:
            if self.follower.generation == 0 and self._backing.last_version is None:  # nothing to stand in for
                raise error if isinstance(error, NeverRead) else NeverRead(error) from error
            if self.degraded_max_age_seconds <= 0 or min_seq > self.follower.seen_seq:
                raise
            return self._held_lookup(codes, error)
        if self.degraded:
            self.degraded = False
            log.warning("eligibility cache readable again: degraded mode over")
        return lookup

    def _held_lookup(self, codes: Collection[str], error: CacheUnavailable) -> Lookup:
        """Degraded mode: what the process holds, the other codes unverified."""
        if not self.degraded:
            self.degraded = True
            log.warning(
                "degraded mode: %s; answering from records held for up to %.0f s", error, self.degraded_max_age_seconds
            )
        found: dict[str, PractitionerRecord] = {}
        unverified = self.cache.held_many(codes, found, self.degraded_max_age_seconds)
        self.stats.degraded_lookups += 1
        self.stats.unverified += len(unverified)
        follower = self.follower
        snapshot_id, seq = (follower.snapshot_id, follower.seen_seq)
        if follower.generation == 0 and self._backing.last_version is not None:  # read, but not yet followed
            snapshot_id, seq = self._backing.last_version
        return Lookup(found, snapshot_id, seq, follower.generation, frozenset(unverified))

    async def _lookup(self, codes: Collection[str], min_seq: int) -> Lookup:
        follower = self.follower
        if not follower.trusted or follower.seen_seq < min_seq:
            self.stats.misses += len(codes)
            trusted = follower.trusted  # as when the read began: catching up may finish meanwhile
            lookup = await self._backing.lookup(codes, min_seq)
            if not trusted and self.degraded_max_age_seconds > 0:
                self.cache.hold_many(codes, lookup.records)  # what it read, should Redis go away
            return lookup
        found: dict[str, PractitionerRecord] = {}
        # While notifications flow, a cached entry is as good as a fresh read, whatever its
        # age; the maximum age bounds what a silently broken stream can leave stale.
        missing = self.cache.get_many(codes, found, -float("inf") if follower.hearing() else None)
        self.stats.hits += len(codes) - len(missing)
        if missing:
            self.stats.misses += len(missing)
            epoch = self.cache.epoch
            fetched = await self._backing.lookup(missing, min_seq)
            if fetched.generation != follower.generation:
                # A switch the follower has not seen yet: answer wholly from the new snapshot,
                # never half from the cached one.
                return await self._backing.lookup(codes, min_seq)
            found.update(fetched.records)
            # A replica may answer from before a change this worker has already been told
            # of: that read serves this claim (it is one replication lag old) but is not
            # kept, or the cache would hold it until the maximum age. From a master, and
            # from a replica that has caught up, applied_seq is never behind seen_seq.
            if follower.trusted and fetched.applied_seq >= follower.seen_seq:
                self.cache.put_many(missing, fetched.records, epoch)
        return Lookup(found, follower.snapshot_id, follower.seen_seq, follower.generation)

    async def registry_updated_at(self) -> float | None:
        return await self._backing.registry_updated_at()

    async def close(self) -> None:
        if self._warmer is not None:
            await stop_task(self._warmer)
        await self.follower.close()
        await self._backing.close()
