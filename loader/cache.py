"""Writes generations of the eligibility cache and switches readers to them atomically."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import redis
from redis.connection import Connection

from gatekeeper import keys
from loader.rows import RegistryRow

# Listpack hashes are what keep a practitioner under 64 bytes; a record with a long
# reason would otherwise turn its whole bucket into a hashtable (see docs/cache-layout.md).
LISTPACK_SETTINGS = {"hash-max-listpack-entries": "512", "hash-max-listpack-value": "1024"}
SENTINEL_BATCH = 2_000
APPLY_BATCH = 200  # changes per gk_apply call
DEFAULT_LEASE_SECONDS = 30.0
# gk:changes keeps about this many entries: enough for a snapshot load to replay what was
# applied since the snapshot's watermark, and for readers to catch up after a blip.
CHANGE_LOG_LENGTH = 200_000

_FUNCTIONS = resources.files("loader").joinpath("gatekeeper.lua").read_text(encoding="utf-8")


class LoaderBusy(RuntimeError):
    """Another snapshot load holds the loading lease."""


class LeaseLost(RuntimeError):
    """The loading lease expired before the switch (the loader stalled)."""


class NoSnapshot(RuntimeError):
    """Changes cannot be applied before a first snapshot is loaded."""


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
    raw = cast(dict[bytes, bytes], client.hgetall(keys.META))
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


def load_functions(client: redis.Redis) -> None:
    """Install (or upgrade) the loader's Redis Functions."""
    client.function_load(_FUNCTIONS, replace=True)


def ensure_listpack_settings(client: redis.Redis) -> bool:
    """Raise the listpack limits if the server allows CONFIG SET; False if it does not."""
    try:
        current = cast(dict[str, str], client.config_get("hash-max-listpack-*"))
        for name, wanted in LISTPACK_SETTINGS.items():
            if int(current.get(name, "0")) < int(wanted):
                client.config_set(name, wanted)
    except redis.ResponseError:
        return False
    return True


@dataclass
class WriteStats:
    """What writing rows into a generation did."""

    practitioners: int = 0  # codes new to the generation
    merged: int = 0  # rows merged into a code already there
    stale: int = 0  # rows older than what the generation already had
    findings: set[str] = field(default_factory=set)  # codes re-registered during a ban


class _Lease:
    """Keeps ``gk:loading`` ours while a snapshot loads; renewed from a thread."""

    def __init__(self, client: redis.Redis, value: str, seconds: float) -> None:
        self._redis = client
        self.value = value
        self._milliseconds = int(seconds * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="loading-lease", daemon=True)

    def acquire(self) -> bool:
        return bool(self._redis.set(keys.LOADING, self.value, nx=True, px=self._milliseconds))

    def start_renewing(self) -> None:
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._milliseconds / 3000):
            # A failed renewal may succeed next time; a lost lease is caught at the switch.
            with contextlib.suppress(redis.RedisError):
                self._redis.fcall("gk_renew", 1, keys.LOADING, self.value, self._milliseconds)

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._redis.get(keys.LOADING) == self.value.encode():
            self._redis.delete(keys.LOADING)


class GenerationWriter:
    """Fills one new generation under the loading lease; readers see nothing of it until
    :meth:`switch`, and changes applied meanwhile are written into it too."""

    def __init__(
        self,
        client: redis.Redis,
        buckets: int,
        watermark_seq: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._redis = client
        self.buckets = buckets
        self.watermark_seq = watermark_seq
        load_functions(client)
        self.generation = int(client.incr(keys.GENERATION_COUNTER))
        token = secrets.token_hex(8)
        self._lease = _Lease(client, f"{self.generation} {buckets} {watermark_seq} {token}", lease_seconds)
        if not self._lease.acquire():
            holder = client.get(keys.LOADING)
            raise LoaderBusy(f"another snapshot load holds {keys.LOADING}: {holder!r}")
        self._connection: Connection | None = None
        self._in_flight = False
        client.sadd(keys.GENERATIONS, self.generation)
        self._lease.start_renewing()
        self._write_sentinels()

    def _bucket_key(self, code: str) -> str:
        return keys.bucket_key(self.generation, keys.bucket_of(code, self.buckets))

    def _write_sentinels(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(self.buckets):
            pipe.hset(keys.bucket_key(self.generation, bucket), keys.BUCKET_SENTINEL, b"")
            if bucket % SENTINEL_BATCH == SENTINEL_BATCH - 1:
                pipe.execute()
        pipe.execute()

    def add(self, rows: Sequence[tuple[str, bytes]], stats: WriteStats) -> None:
        """Write snapshot rows (code, one-period record): a code's first row as it is,
        later ones merged by chg_id and seq. One gk_insert call per batch.

        The call is sent without waiting for its answer, which is read when the next
        batch is sent (or by :meth:`flush`): Redis merges one batch while Python parses
        the next, each on its own core.
        """
        bucket_keys = [self._bucket_key(code) for code, _ in rows]
        arguments = [value for row in rows for value in row]
        if self._connection is None:
            self._connection = self._redis.connection_pool.get_connection()
        self.flush(stats)
        self._connection.send_command(  # type: ignore[no-untyped-call]
            "FCALL", "gk_insert", len(bucket_keys), *bucket_keys, *arguments
        )
        self._in_flight = True

    def flush(self, stats: WriteStats) -> None:
        """Wait for the batch in flight and count what it did."""
        if not self._in_flight or self._connection is None:
            return
        self._in_flight = False
        reply = self._connection.read_response()
        if isinstance(reply, redis.ResponseError):
            raise reply
        inserted, merged, stale, findings = cast(list[Any], reply)
        stats.practitioners += inserted
        stats.merged += merged
        stats.stale += stale
        stats.findings.update(code.decode() for code in findings)

    def _release_connection(self) -> None:
        if self._connection is not None:
            if self._in_flight:  # abandoned mid-batch: the connection's state is unknown
                self._connection.disconnect()  # type: ignore[no-untyped-call]
            self._redis.connection_pool.release(self._connection)
            self._connection = None
            self._in_flight = False

    def replay_changes(self) -> int:
        """Merge every logged change newer than the snapshot: those applied before this load
        began (later ones were written here by gk_apply already). Returns how many."""
        replayed = 0
        last_id: bytes | str = "-"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]], self._redis.xrange(keys.CHANGES, min=last_id, count=1000)
            )
            entries = [entry for entry in page if entry[0] != last_id]
            if not entries:
                return replayed
            pipe = self._redis.pipeline(transaction=False)
            for _, fields in entries:
                seq = fields.get(b"seq")
                if seq is not None and int(seq) > self.watermark_seq:
                    code = fields[b"code"].decode()
                    pipe.fcall("gk_merge", 1, self._bucket_key(code), code, fields[b"record"], self.watermark_seq)
                    replayed += 1
            pipe.execute()
            last_id = entries[-1][0]

    def switch(self, snapshot_id: str, record_count: int) -> int | None:
        """Point readers at this generation (atomically); returns the generation replaced."""
        self._release_connection()
        try:
            previous = self._redis.fcall(
                "gk_switch",
                3,
                keys.META,
                keys.LOADING,
                keys.CHANGES,
                self._lease.value.rsplit(" ", 1)[1],
                self.generation,
                self.buckets,
                snapshot_id,
                self.watermark_seq,
                record_count,
                f"{time.time():.3f}",
                CHANGE_LOG_LENGTH,
            )
        except redis.ResponseError as error:
            if "LEASE" in str(error):
                raise LeaseLost(str(error)) from error
            raise
        finally:
            self._lease.release()
        return int(previous) if previous else None

    def abandon(self) -> None:
        """Give up this generation: release the lease and delete what was written."""
        self._release_connection()
        self._lease.release()
        drop_generation(self._redis, self.generation)


def drop_generation(client: redis.Redis, generation: int) -> int:
    """Delete every key of a generation that readers no longer use."""
    dropped = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=keys.generation_pattern(generation), count=1000):
        batch.append(key)
        if len(batch) == 1000:
            dropped += int(client.unlink(*batch))
            batch.clear()
    if batch:
        dropped += int(client.unlink(*batch))
    client.srem(keys.GENERATIONS, generation)
    return dropped


def drop_abandoned_generations(client: redis.Redis) -> list[int]:
    """Drop generations left by loaders that died before switching (not the current one,
    nor one whose load still holds the lease)."""
    keep = {read_state(client).generation}
    loading = client.get(keys.LOADING)
    if loading:
        keep.add(int(loading.split()[0]))
    dropped = []
    for member in client.smembers(keys.GENERATIONS):
        generation = int(member)
        if generation not in keep:
            drop_generation(client, generation)
            dropped.append(generation)
    return sorted(dropped)


@dataclass
class ApplyStats:
    """What applying changes did."""

    applied: int = 0
    stale: int = 0
    findings: set[str] = field(default_factory=set)


class ChangeApplier:
    """Applies change-feed rows to the current generation (and to one being loaded)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        load_functions(client)
        self._layout: tuple[str, int, int | None, int] | None = None

    def _read_layout(self) -> tuple[str, int, int | None, int]:
        state = read_state(self._redis)
        if state.generation is None:
            raise NoSnapshot("no registry snapshot is loaded: load one before applying changes")
        loading = self._redis.get(keys.LOADING)
        loading_generation, loading_buckets = None, 0
        if loading:
            generation, buckets, *_ = loading.split()
            loading_generation, loading_buckets = int(generation), int(buckets)
        layout = f"{state.generation}/{loading_generation or 0}"
        return layout, state.buckets, loading_generation, loading_buckets

    def apply(self, rows: Iterable[RegistryRow], stats: ApplyStats) -> None:
        """Apply changes in batches; each batch is atomic (one gk_apply call)."""
        batch: list[RegistryRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) == APPLY_BATCH:
                self._apply_batch(batch, stats)
                batch = []
        if batch:
            self._apply_batch(batch, stats)

    def _apply_batch(self, rows: Sequence[RegistryRow], stats: ApplyStats) -> None:
        records = [row.encoded() for row in rows]
        for _ in range(5):
            if self._layout is None:
                self._layout = self._read_layout()
            layout, buckets, loading_generation, loading_buckets = self._layout
            current_generation = int(layout.split("/")[0])
            bucket_keys = [keys.bucket_key(current_generation, keys.bucket_of(r.prac_psn_code, buckets)) for r in rows]
            if loading_generation is not None:
                bucket_keys += [
                    keys.bucket_key(loading_generation, keys.bucket_of(r.prac_psn_code, loading_buckets)) for r in rows
                ]
            arguments: list[str | bytes | int] = [layout, CHANGE_LOG_LENGTH]
            for row, record in zip(rows, records, strict=True):
                arguments += [row.prac_psn_code, record]
            try:
                result = self._redis.fcall(
                    "gk_apply", 3 + len(bucket_keys), keys.META, keys.LOADING, keys.CHANGES, *bucket_keys, *arguments
                )
            except redis.ResponseError as error:
                if "NOSNAPSHOT" in str(error):
                    raise NoSnapshot(str(error)) from error
                raise
            if result[0] == -1:
                self._layout = None
                continue
            applied, stale, findings = result
            stats.applied += applied
            stats.stale += stale
            stats.findings.update(code.decode() for code in findings)
            return
        raise RuntimeError("the cache layout kept changing while applying changes")
