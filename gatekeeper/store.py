"""Where the servicer reads eligibility records: Redis in production, memory in unit tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from gatekeeper import keys
from gatekeeper.errors import CacheCorrupt, CacheUnavailable, RegistryNotLoaded
from gatekeeper.records import PractitionerRecord, decode_record

# A snapshot switch between reading gk:meta and reading the buckets makes a reader read
# again; more than this many switches in a row means something is wrong.
MAX_READ_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Lookup:
    """Records of the codes asked for that the registry knows, and the data's version."""

    records: dict[str, PractitionerRecord]
    registry_version: str


class EligibilityStore(Protocol):
    """Reads practitioner records from one consistent registry snapshot."""

    async def lookup(self, codes: Collection[str]) -> Lookup:
        """Records for ``codes`` (unknown codes are absent). Raises RegistryNotLoaded,
        CacheUnavailable."""
        ...

    async def registry_loaded(self) -> bool:
        """True once a registry snapshot is present."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def registry_version(snapshot_id: str, applied_seq: int) -> str:
    """The version string of a response: the snapshot and the last change applied."""
    return f"{snapshot_id}@{applied_seq}"


class MemoryEligibilityStore:
    """An in-memory store for unit tests of the servicer."""

    def __init__(self, records: Mapping[str, PractitionerRecord], version: str = "memory@0") -> None:
        self.records = dict(records)
        self.version: str | None = version

    async def lookup(self, codes: Collection[str]) -> Lookup:
        if self.version is None:
            raise RegistryNotLoaded()
        return Lookup({c: self.records[c] for c in codes if c in self.records}, self.version)

    async def registry_loaded(self) -> bool:
        return self.version is not None

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
    HMGET per bucket the claim's codes fall in (see docs/cache-layout.md)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._generation: _Generation | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisEligibilityStore:
        """A store on a new connection pool for ``url``."""
        return cls(redis.Redis.from_url(url))

    async def _read_meta(self) -> list[bytes | None]:
        return await self._redis.hmget(keys.META, _META_FIELDS)  # type: ignore[return-value]  # bytes: no decoding

    @staticmethod
    def _generation_of(meta: list[bytes | None]) -> _Generation:
        generation, buckets = meta[0], meta[1]
        if generation is None or buckets is None:
            raise RegistryNotLoaded()
        return _Generation(int(generation), int(buckets))

    async def lookup(self, codes: Collection[str]) -> Lookup:
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
                records = {}
                for bucket_codes, values in zip(by_bucket.values(), buckets, strict=True):
                    for code, value in zip(bucket_codes, values[1:], strict=True):
                        if value is not None:
                            records[code] = decode_record(value)
                snapshot_id = (meta[2] or b"").decode()
                return Lookup(records, registry_version(snapshot_id, int(meta[3] or 0)))
        except RedisError as error:
            raise CacheUnavailable(f"eligibility cache unavailable: {error}") from error
        except msgspec.DecodeError as error:
            raise CacheCorrupt(f"eligibility cache holds an undecodable record: {error}") from error
        raise CacheUnavailable("the registry snapshot kept switching during the read")

    async def registry_loaded(self) -> bool:
        try:
            return await self._redis.hget(keys.META, keys.MetaField.GENERATION) is not None
        except RedisError:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
