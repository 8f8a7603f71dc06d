"""Where the servicer reads eligibility records: Redis, a near cache in front of it, or memory."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gatekeeper import keys, metrics
from gatekeeper.errors import CacheCorrupt, CacheUnavailable, NeverRead, RegistryBehind, RegistryNotLoaded
from gatekeeper.records import PractitionerRecord, decode_record

# A snapshot switch between reading gk:meta and reading the buckets makes a reader read
# again; more than this many switches in a row (snapshots load minutes apart) means
# something is wrong.
MAX_READ_ATTEMPTS = 10
MAX_VERSION_LENGTH = 128


def redis_client(
    url: str, timeout_seconds: float | None, read_timeout_seconds: float | None = None, **options: Any
) -> redis.Redis:
    """A client whose every command, connecting included, gives up after ``timeout_seconds``
    (reading after ``read_timeout_seconds`` when given: a blocking XREAD waits longer).

    No retries: redis-py retries a failed command three times by default, which would
    multiply the time a hung Redis holds a claim. The caller decides what a failure means.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds if read_timeout_seconds is None else read_timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def registry_version(snapshot_id: str, applied_seq: int) -> str:
    """The version string of a response: the snapshot and the last change applied."""
    return f"{snapshot_id}@{applied_seq}"


def version_seq(version: str) -> int:
    """The comparable part of a registry version: the registry seq it includes.

    Seqs only grow, across snapshots too, so a version is newer than another exactly
    when its seq is higher. ValueError for text that is not a version.
    """
    _, separator, seq = version.rpartition("@")
    if len(version) > MAX_VERSION_LENGTH or not separator or not seq.isascii() or not seq.isdigit():
        raise ValueError(f"{version[:60]!r} is not a registry version (<snapshot_id>@<seq>)")
    return int(seq)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Records of the codes asked for that the registry knows, and the data's version.

    In degraded mode (the cache unreadable) ``unverified`` holds the codes whose records
    could not be read: they are absent from ``records`` without being unknown.
    """

    records: dict[str, PractitionerRecord]
    snapshot_id: str
    applied_seq: int
    generation: int = 0
    unverified: frozenset[str] = frozenset()

    @property
    def registry_version(self) -> str:
        """``<snapshot_id>@<applied_seq>``."""
        return registry_version(self.snapshot_id, self.applied_seq)


class EligibilityStore(Protocol):
    """Reads practitioner records from one consistent registry snapshot."""

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        """Records for ``codes`` (unknown codes are absent), from data that includes registry
        seq ``min_seq``. Raises RegistryNotLoaded, RegistryBehind, CacheUnavailable; a store
        in degraded mode answers CacheUnavailable with the codes in ``Lookup.unverified``."""
        ...

    async def registry_loaded(self) -> bool:
        """True once a registry snapshot is present."""
        ...

    async def registry_updated_at(self) -> float | None:
        """When the registry data was last updated, in epoch seconds: the snapshot switch or
        the latest change applied since, whichever is later; None without a snapshot."""
        ...

    async def close(self) -> None:
        """Release connections and background tasks."""
        ...


class MemoryEligibilityStore:
    """An in-memory store for unit tests of the servicer."""

    def __init__(
        self, records: Mapping[str, PractitionerRecord], snapshot_id: str = "memory", applied_seq: int = 0
    ) -> None:
        self.records = dict(records)
        self.snapshot_id: str | None = snapshot_id
        self.applied_seq = applied_seq
        self.updated_at = time.time()

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        if self.snapshot_id is None:
            raise RegistryNotLoaded()
        if self.applied_seq < min_seq:
            raise RegistryBehind(min_seq, self.applied_seq)
        found = {c: self.records[c] for c in codes if c in self.records}
        return Lookup(found, self.snapshot_id, self.applied_seq)

    async def registry_loaded(self) -> bool:
        return self.snapshot_id is not None

    async def registry_updated_at(self) -> float | None:
        return self.updated_at if self.snapshot_id is not None else None

    async def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Generation:
    number: int
    buckets: int


_META_FIELDS = (
    keys.MetaField.GENERATION,
    keys.MetaField.BUCKETS,
    keys.MetaField.SNAPSHOT_ID,
    keys.MetaField.APPLIED_SEQ,
)


class RedisEligibilityStore:
    """Reads records with one pipelined round trip per claim: the meta hash, then one
    HMGET per bucket the claim's codes fall in (see docs/cache-layout.md).

    How long a hung Redis can hold a lookup is up to the client's timeouts (see
    :func:`redis_client`: one timeout per command, no retries). With ``degraded`` an
    unreadable cache makes every code unverified (this store holds no records) instead of
    raising CacheUnavailable; the near cache (nearcache.py) does better.
    """

    def __init__(self, client: redis.Redis, degraded: bool = False) -> None:
        self._redis = client
        self._generation: _Generation | None = None
        self._degraded = degraded
        # Of the last lookup that read Redis: what degraded answers show. None: no registry
        # data read since start, so nothing to stand in for.
        self.last_version: tuple[str, int] | None = None

    @classmethod
    def from_url(cls, url: str, timeout_seconds: float | None = None, degraded: bool = False) -> RedisEligibilityStore:
        """A store on a new connection pool for ``url``; ``timeout_seconds`` bounds each command."""
        return cls(redis_client(url, timeout_seconds), degraded)

    async def _read_meta(self) -> list[bytes | None]:
        return await self._redis.hmget(keys.META, _META_FIELDS)  # type: ignore[return-value]  # bytes: no decoding

    @staticmethod
    def _generation_of(meta: list[bytes | None]) -> _Generation:
        generation, buckets = meta[0], meta[1]
        if generation is None or buckets is None:
            raise RegistryNotLoaded()
        return _Generation(int(generation), int(buckets))

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        try:
            lookup = await self._read(codes, min_seq)
        except CacheUnavailable as error:
            if self.last_version is None:
                raise NeverRead(error) from error
            snapshot_id, applied_seq = self.last_version
            if not self._degraded or min_seq > applied_seq:
                raise
            return Lookup({}, snapshot_id, applied_seq, unverified=frozenset(codes))
        self.last_version = (lookup.snapshot_id, lookup.applied_seq)
        return lookup

    async def _read(self, codes: Collection[str], min_seq: int) -> Lookup:
        try:
            for _ in range(MAX_READ_ATTEMPTS):
                if self._generation is None:
                    self._generation = self._generation_of(await self._read_meta())
                generation = self._generation
                by_bucket: dict[int, list[str]] = defaultdict(list)
                for code in codes:
                    by_bucket[keys.bucket_of(code, generation.buckets)].append(code)
                pipe = self._redis.pipeline(transaction=False)
                pipe.hmget(keys.META, _META_FIELDS)
                for bucket, bucket_codes in by_bucket.items():
                    pipe.hmget(keys.bucket_key(generation.number, bucket), keys.BUCKET_SENTINEL, *bucket_codes)
                meta, *buckets = await pipe.execute()
                current = self._generation_of(meta)
                if current != generation or any(values[0] is None for values in buckets):
                    # The snapshot switched under us: read again from the new generation.
                    self._generation = current if current != generation else None
                    continue
                applied_seq = int(meta[3] or 0)
                if applied_seq < min_seq:
                    raise RegistryBehind(min_seq, applied_seq)
                records = {}
                for bucket_codes, values in zip(by_bucket.values(), buckets, strict=True):
                    for code, value in zip(bucket_codes, values[1:], strict=True):
                        if value is not None:
                            records[code] = decode_record(value)
                return Lookup(records, (meta[2] or b"").decode(), applied_seq, generation.number)
        except RedisError as error:
            metrics.REDIS_ERRORS.labels("lookup").inc()
            raise CacheUnavailable(f"eligibility cache unavailable: {error}") from error
        except msgspec.DecodeError as error:
            raise CacheCorrupt(f"eligibility cache holds an undecodable record: {error}") from error
        raise CacheUnavailable("the registry snapshot kept switching during the read")

    async def registry_loaded(self) -> bool:
        try:
            return await self._redis.hget(keys.META, keys.MetaField.GENERATION) is not None
        except RedisError as error:
            raise CacheUnavailable(str(error)) from error

    async def registry_updated_at(self) -> float | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(keys.META, [keys.MetaField.GENERATION, keys.MetaField.SWITCHED_AT])
        pipe.xrevrange(keys.CHANGES, count=1)
        try:
            (generation, switched_at), latest = await pipe.execute()
        except RedisError as error:
            raise CacheUnavailable(str(error)) from error
        if generation is None:
            return None
        # A stream entry id starts with the Redis server's clock in milliseconds.
        changed_at = int(latest[0][0].split(b"-")[0]) / 1000 if latest else 0.0
        return max(float(switched_at or 0), changed_at)

    async def close(self) -> None:
        await self._redis.aclose()
