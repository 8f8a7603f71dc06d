"""The near cache: decoded records in process, kept coherent through ``gk:changes``.

A steady-state check needs no Redis round trip. Coherence (docs/cache-layout.md):
- each change entry drops the codes it names, and a switch entry drops everything;
- a reader that lost its connection, or finds that entries it never read were trimmed,
  drops everything and reads through to Redis until it has caught up again;
- no entry is used after ``max_age_seconds``, whatever happens to notifications.

Degraded mode: when Redis cannot be read, what the process holds (entries of the live
cache, and those it stopped trusting when notifications broke off) answers for up to
``degraded_max_age_seconds`` after each was fetched; other codes come back unverified.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis

from gatekeeper import changelog, keys, metrics
from gatekeeper.errors import CacheUnavailable
from gatekeeper.records import PractitionerRecord
from gatekeeper.store import Lookup, RedisEligibilityStore, redis_client
from gatekeeper.tasks import stop_task

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 1_000_000
# Notifications keep the cache coherent within milliseconds; the age bound is the safety
# net for a notification path that fails silently.
DEFAULT_MAX_AGE_SECONDS = 120.0
# Registry changes are decided days ahead and arrive a few a minute: a record an hour old
# is almost always still right, and far better than none while Redis is away.
DEFAULT_DEGRADED_MAX_AGE_SECONDS = 3600.0
BLOCK_MILLISECONDS = 1_000
STREAM_CLIENT_NAME = "gatekeeper-near-cache"  # CLIENT LIST shows which connections follow gk:changes
RECONNECT_BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class NearCacheStats:
    """Counters for metrics and the benchmark."""

    hits: int = 0
    misses: int = 0
    invalidations: int = 0
    clears: int = 0
    degraded_lookups: int = 0  # lookups answered without Redis
    unverified: int = 0  # codes those lookups could not answer for


class NearCache:
    """A bounded map of code -> (record or None for unknown, time fetched).

    Eviction is first-in first-out (dicts keep insertion order): cheaper than LRU on the
    hot path, and practitioners who bill often are fetched again at once after eviction.
    """

    def __init__(self, max_entries: int, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._entries: dict[str, tuple[PractitionerRecord | None, float]] = {}
        # Entries no longer trusted for ordinary lookups (notifications broke off), kept for
        # degraded mode until the cache catches up again.
        self._held: dict[str, tuple[PractitionerRecord | None, float]] = {}
        self.epoch = 0  # bumped by every invalidation: a fetch that began before it is not kept

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, codes: Collection[str], found: dict[str, PractitionerRecord]) -> list[str]:
        """Put fresh cached records of ``codes`` into ``found``; return the codes to fetch."""
        oldest = self._clock() - self.max_age_seconds
        missing = []
        entries = self._entries
        for code in codes:
            entry = entries.get(code)
            if entry is None or entry[1] < oldest:
                missing.append(code)
            elif entry[0] is not None:
                found[code] = entry[0]
        return missing

    def put_many(self, codes: Collection[str], records: dict[str, PractitionerRecord], epoch: int) -> None:
        """Remember fetched records (and that the other codes are unknown), unless an
        invalidation happened since ``epoch``."""
        if epoch != self.epoch:
            return
        now = self._clock()
        entries = self._entries
        for code in codes:
            entries.pop(code, None)  # re-inserted at the end: the newest for FIFO eviction
            entries[code] = (records.get(code), now)
        overflow = len(entries) - self.max_entries
        if overflow > 0:
            for code in list(itertools.islice(entries, overflow)):
                del entries[code]

    def invalidate(self, codes: Collection[str]) -> None:
        """Forget these codes, held entries too: a record known to be stale never answers."""
        self.epoch += 1
        for code in codes:
            self._entries.pop(code, None)
            self._held.pop(code, None)

    def clear(self) -> None:
        """Forget everything, held entries too."""
        self.epoch += 1
        self._entries.clear()
        self._held = {}

    def retire(self) -> None:
        """Stop answering ordinary lookups from the entries (their notifications may have
        been missed), but hold them for degraded mode, where their age bounds their use."""
        self.epoch += 1
        if not self._held:
            self._held = self._entries
        else:
            for code, entry in self._entries.items():  # the newer entries win
                self._held.pop(code, None)
                self._held[code] = entry
            self._trim_held()
        self._entries = {}

    def hold_many(self, codes: Collection[str], records: dict[str, PractitionerRecord]) -> None:
        """Hold records read while the cache is not trusted (and that the other codes are
        unknown): for degraded mode only."""
        now = self._clock()
        held = self._held
        for code in codes:
            held.pop(code, None)
            held[code] = (records.get(code), now)
        self._trim_held()

    def _trim_held(self) -> None:
        """Hold no more than ``max_entries``, the oldest dropped first."""
        overflow = len(self._held) - self.max_entries
        if overflow > 0:
            for code in list(itertools.islice(self._held, overflow)):
                del self._held[code]

    def held_many(self, codes: Collection[str], found: dict[str, PractitionerRecord], max_age: float) -> list[str]:
        """Degraded mode: put records of ``codes`` fetched within ``max_age`` into ``found``,
        from live or held entries; return the codes the process holds nothing recent for."""
        oldest = self._clock() - max_age
        unverified = []
        for code in codes:
            entry = self._entries.get(code) or self._held.get(code)
            if entry is None or entry[1] < oldest:
                unverified.append(code)
            elif entry[0] is not None:
                found[code] = entry[0]
        return unverified


class CachingEligibilityStore:
    """An EligibilityStore that answers from the near cache and reads only misses from Redis."""

    def __init__(
        self,
        backing: RedisEligibilityStore,
        stream_client: redis.Redis,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        degraded_max_age_seconds: float = 0.0,
    ) -> None:
        self._backing = backing
        self.degraded_max_age_seconds = degraded_max_age_seconds  # 0: no degraded mode
        self.degraded = False  # the last read of Redis failed
        self._stream = stream_client
        # The stream is read raw: a change entry repeats its field names (changelog.py).
        for command in ("XREAD", "XREVRANGE", "XINFO STREAM"):
            self._stream.response_callbacks[command] = lambda response, **_: response
        self.cache = NearCache(max_entries, max_age_seconds, clock)
        self.stats = NearCacheStats()
        self.trusted = False  # following gk:changes and caught up: the cache may be used
        self.snapshot_id = ""
        self.generation = 0
        self.seen_seq = 0  # every change up to this seq has been applied to the cache
        self._last_id = b"0-0"
        self._task: asyncio.Task[None] | None = None
        # Milliseconds from a change being logged (its stream id) to this worker dropping it.
        self.notification_lags_ms: deque[float] = deque(maxlen=100_000)
        self._closing = False
        self.caught_up = asyncio.Event()

    @classmethod
    def from_url(
        cls,
        url: str,
        max_entries: int,
        max_age_seconds: float,
        timeout_seconds: float | None = None,
        degraded_max_age_seconds: float = 0.0,
    ) -> CachingEligibilityStore:
        """A caching store over Redis at ``url``; the stream reader has its own connection,
        whose reads wait out XREAD's BLOCK before they time out."""
        backing = RedisEligibilityStore.from_url(url, timeout_seconds)
        read_timeout = None if timeout_seconds is None else timeout_seconds + BLOCK_MILLISECONDS / 1000
        stream = redis_client(url, timeout_seconds, read_timeout, client_name=STREAM_CLIENT_NAME)
        return cls(
            backing,
            stream,
            max_entries,
            max_age_seconds,
            degraded_max_age_seconds=degraded_max_age_seconds,
        )

    def reset_stats(self) -> None:
        """Start counting afresh (the benchmark measures after its warm-up)."""
        self.stats = NearCacheStats()
        self.notification_lags_ms.clear()

    def start(self) -> None:
        """Start following gk:changes (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="near-cache-follower")

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        try:
            lookup = await self._lookup(codes, min_seq)
        except CacheUnavailable as error:
            if self.degraded_max_age_seconds <= 0 or min_seq > self.seen_seq:
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
        return Lookup(found, self.snapshot_id, self.seen_seq, self.generation, frozenset(unverified))

    async def _lookup(self, codes: Collection[str], min_seq: int) -> Lookup:
        if not self.trusted or self.seen_seq < min_seq:
            self.stats.misses += len(codes)
            trusted = self.trusted  # as when the read began: catching up may finish meanwhile
            lookup = await self._backing.lookup(codes, min_seq)
            if not trusted and self.degraded_max_age_seconds > 0:
                self.cache.hold_many(codes, lookup.records)  # what it read, should Redis go away
            return lookup
        found: dict[str, PractitionerRecord] = {}
        missing = self.cache.get_many(codes, found)
        self.stats.hits += len(codes) - len(missing)
        if missing:
            self.stats.misses += len(missing)
            epoch = self.cache.epoch
            fetched = await self._backing.lookup(missing, min_seq)
            if fetched.generation != self.generation:
                # A switch the follower has not seen yet: answer wholly from the new snapshot,
                # never half from the cached one.
                return await self._backing.lookup(codes, min_seq)
            found.update(fetched.records)
            if self.trusted:
                self.cache.put_many(missing, fetched.records, epoch)
        return Lookup(found, self.snapshot_id, self.seen_seq, self.generation)

    async def registry_loaded(self) -> bool:
        return await self._backing.registry_loaded()

    async def registry_updated_at(self) -> float | None:
        return await self._backing.registry_updated_at()

    async def close(self) -> None:
        # The flag as well as the cancel: the Redis client can swallow a cancellation that
        # lands mid-command, and the follower would then read on forever.
        self._closing = True
        if self._task is not None:
            await stop_task(self._task)
        await self._stream.aclose()
        await self._backing.close()

    def _distrust(self, why: str) -> None:
        if self.trusted:
            log.warning("near cache dropped: %s", why)
        self.trusted = False
        self.caught_up.clear()
        self.cache.retire()  # no longer used for ordinary lookups; held for degraded mode
        self.stats.clears += 1

    async def _catch_up(self) -> None:
        """(Re)start following: remember where the stream ends, then what is loaded."""
        latest = cast(
            list[Any],
            await self._stream.execute_command(  # type: ignore[no-untyped-call]
                "XREVRANGE", keys.CHANGES, "+", "-", "COUNT", 1
            ),
        )
        self._last_id = latest[0][0] if latest else b"0-0"
        meta = cast(
            list[bytes | None],
            await self._stream.hmget(
                keys.META, [keys.MetaField.GENERATION, keys.MetaField.SNAPSHOT_ID, keys.MetaField.APPLIED_SEQ]
            ),
        )
        self.generation = int(meta[0] or 0)
        self.snapshot_id = (meta[1] or b"").decode()
        self.seen_seq = int(meta[2] or 0)
        self.cache.retire()  # not trusted until re-read; still held, should Redis go away again
        self.trusted = self.generation > 0
        if self.trusted:
            self.caught_up.set()

    async def _missed_entries(self) -> bool:
        info = cast(
            dict[bytes, Any] | list[Any],
            await self._stream.execute_command("XINFO STREAM", keys.CHANGES),  # type: ignore[no-untyped-call]
        )
        fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=True))
        deleted = fields.get(b"max-deleted-entry-id", b"0-0")
        return changelog.missed_entries(self._last_id, deleted)

    def _apply(self, entry: changelog.Entry) -> bool:
        """Apply one entry; False when it is a switch (the caller re-reads what is loaded)."""
        self._last_id = entry.entry_id
        if entry.switched_to is not None:
            return False
        self.cache.invalidate([code for change in entry.changes for code in change.codes])
        self.notification_lags_ms.append(time.time() * 1000 - changelog.stream_id(entry.entry_id)[0])
        self.stats.invalidations += len(entry.changes)
        for change in entry.changes:
            if change.seq > self.seen_seq:
                self.seen_seq = change.seq
        return True

    async def _follow(self) -> None:
        failures = 0
        while not self._closing:
            try:
                if not self.trusted:
                    await self._catch_up()
                    failures = 0
                reply = await self._stream.execute_command(  # type: ignore[no-untyped-call]
                    "XREAD", "COUNT", 1000, "BLOCK", BLOCK_MILLISECONDS, "STREAMS", keys.CHANGES, self._last_id
                )
                switched = False
                # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
                streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply or ()]
                for entries in streams:
                    for entry_id, fields in entries:
                        if not self._apply(changelog.parse_entry(entry_id, fields)):
                            switched = True
                if switched:
                    self._distrust("the registry snapshot switched")
                    self.cache.clear()  # a new snapshot: nothing held from the old one is kept
                elif reply and await self._missed_entries():
                    self._distrust("change notifications were trimmed before they were read")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a lost connection or anything else: trust nothing
                metrics.REDIS_ERRORS.labels("changes").inc()
                self._distrust(f"change notifications unavailable ({error})")
                delay = RECONNECT_BACKOFF_SECONDS[min(failures, len(RECONNECT_BACKOFF_SECONDS) - 1)]
                failures += 1
                await asyncio.sleep(delay)
