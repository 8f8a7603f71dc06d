"""Writes generations of the eligibility cache and switches readers to them atomically."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis

from gatekeeper import keys
from gatekeeper.records import PractitionerRecord, encode_record

GENERATIONS = f"{keys.PREFIX}:generations"  # every generation not yet dropped
# Listpack hashes are what keep a practitioner under 64 bytes; a record with a long
# reason would otherwise turn its whole bucket into a hashtable (see docs/cache-layout.md).
LISTPACK_SETTINGS = {"hash-max-listpack-entries": "512", "hash-max-listpack-value": "1024"}
WRITE_BATCH_BUCKETS = 200


@dataclass(frozen=True)
class CacheState:
    """What ``gk:meta`` says is loaded."""

    generation: int | None
    buckets: int
    snapshot_id: str
    watermark_seq: int
    applied_seq: int
    record_count: int
    switched_at: float


def read_state(client: redis.Redis) -> CacheState:
    """The current generation and what it was loaded from."""
    raw: dict[bytes, bytes] = client.hgetall(keys.META)  # type: ignore[assignment]  # sync client, bytes
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    generation = meta.get(keys.MetaField.GENERATION)
    return CacheState(
        generation=int(generation) if generation else None,
        buckets=int(meta.get(keys.MetaField.BUCKETS, 0)),
        snapshot_id=meta.get(keys.MetaField.SNAPSHOT_ID, ""),
        watermark_seq=int(meta.get(keys.MetaField.WATERMARK_SEQ, 0)),
        applied_seq=int(meta.get(keys.MetaField.APPLIED_SEQ, 0)),
        record_count=int(meta.get(keys.MetaField.RECORD_COUNT, 0)),
        switched_at=float(meta.get(keys.MetaField.SWITCHED_AT, 0)),
    )


def ensure_listpack_settings(client: redis.Redis) -> bool:
    """Raise the listpack limits if the server allows CONFIG SET; False if it does not."""
    try:
        current: dict[str, str] = client.config_get("hash-max-listpack-*")  # type: ignore[assignment]
        for name, wanted in LISTPACK_SETTINGS.items():
            if int(current.get(name, "0")) < int(wanted):
                client.config_set(name, wanted)
    except redis.ResponseError:
        return False
    return True


class GenerationWriter:
    """Fills one new generation; nothing is visible to readers until :meth:`switch`."""

    def __init__(self, client: redis.Redis, buckets: int) -> None:
        self._redis = client
        self.buckets = buckets
        self.generation = int(client.incr(keys.GENERATION_COUNTER))
        client.sadd(GENERATIONS, self.generation)

    def write(self, records: Iterable[tuple[str, PractitionerRecord]]) -> int:
        """Write records (each code once) into their buckets; every bucket gets its sentinel."""
        by_bucket: dict[int, dict[str, bytes]] = {b: {keys.BUCKET_SENTINEL: b""} for b in range(self.buckets)}
        count = 0
        for code, record in records:
            by_bucket[keys.bucket_of(code, self.buckets)][code] = encode_record(record)
            count += 1
        self.write_buckets(by_bucket.items())
        return count

    def write_buckets(self, buckets: Iterable[tuple[int, dict[str, bytes]]]) -> None:
        """HSET whole buckets, pipelined in batches."""
        pipe = self._redis.pipeline(transaction=False)
        pending = 0
        for bucket, fields in buckets:
            pipe.hset(keys.bucket_key(self.generation, bucket), mapping=fields)  # type: ignore[arg-type]
            pending += 1
            if pending == WRITE_BATCH_BUCKETS:
                pipe.execute()
                pending = 0
        if pending:
            pipe.execute()

    def switch(self, snapshot_id: str, watermark_seq: int, record_count: int) -> int | None:
        """Point readers at this generation in one HSET; returns the generation it replaced."""
        previous = self._redis.hget(keys.META, keys.MetaField.GENERATION)
        self._redis.hset(
            keys.META,
            mapping={
                keys.MetaField.GENERATION: self.generation,
                keys.MetaField.BUCKETS: self.buckets,
                keys.MetaField.SNAPSHOT_ID: snapshot_id,
                keys.MetaField.WATERMARK_SEQ: watermark_seq,
                keys.MetaField.APPLIED_SEQ: watermark_seq,
                keys.MetaField.RECORD_COUNT: record_count,
                keys.MetaField.SWITCHED_AT: f"{time.time():.3f}",
            },
        )
        return int(previous) if previous is not None else None


def _keys_of(client: redis.Redis, generation: int) -> Iterator[bytes]:
    yield from client.scan_iter(match=keys.generation_pattern(generation), count=1000)


def drop_generation(client: redis.Redis, generation: int) -> int:
    """Delete every key of a generation that readers no longer use."""
    dropped = 0
    batch: list[bytes] = []
    for key in _keys_of(client, generation):
        batch.append(key)
        if len(batch) == 1000:
            dropped += int(client.unlink(*batch))
            batch.clear()
    if batch:
        dropped += int(client.unlink(*batch))
    client.srem(GENERATIONS, generation)
    return dropped


def drop_abandoned_generations(client: redis.Redis) -> list[int]:
    """Drop generations left by a loader that died before switching to them."""
    current = read_state(client).generation
    dropped = []
    for member in client.smembers(GENERATIONS):
        generation = int(member)
        if generation != current:
            drop_generation(client, generation)
            dropped.append(generation)
    return sorted(dropped)
