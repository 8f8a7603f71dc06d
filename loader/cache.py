"""Writes generations of the eligibility cache and switches readers to them atomically."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, cast

import redis
from redis.connection import Connection

from gatekeeper.cache import changelog, keys
from gatekeeper.cache.layout import BULK, Lease, Meta
from loader.chunks import Batch, Target, pack_batch
from loader.rows import EncodedRow

# Listpack hashes are what keep a practitioner under 64 bytes; a record with a long
# reason would otherwise turn its whole bucket into a hashtable (see docs/cache-layout.md).
LISTPACK_SETTINGS = {"hash-max-listpack-entries": "512", "hash-max-listpack-value": "1024"}
SENTINEL_BATCH = 2_000
BULK_PIPELINE = 200  # bulk HSETs sent together; their answers are read once the next group is sent
APPLY_BATCH = 200  # changes per gk_apply call; gk_apply logs them in one XADD of 8 fields each (10 with moved_from)
DEFAULT_LEASE_SECONDS = 30.0
LEASE_WAIT_MARGIN_SECONDS = 5.0
LEASE_POLL_SECONDS = 0.5
# {gk}:changes keeps about this many entries: enough for a snapshot load to replay what was
# applied since the snapshot's watermark, and for readers to catch up after a blip.
CHANGE_LOG_LENGTH = 200_000
# No Function call may block Redis for long, whatever the data (README, "Limits"); both
# are enforced in gatekeeper.lua, under the same names.
MAX_PERIODS = 100  # periods one practitioner's record holds; a change adding more is refused
CALL_BUDGET_BYTES = 262_144  # record bytes one call merges before it hands the rest back

_FUNCTIONS = resources.files("loader").joinpath("gatekeeper.lua").read_text(encoding="utf-8")


class LoaderBusy(RuntimeError):
    """Another snapshot load holds the loading lease."""


class LeaseLost(RuntimeError):
    """The loading lease expired before the switch (the loader stalled)."""


class NoSnapshot(RuntimeError):
    """Changes cannot be applied before a first snapshot is loaded."""


class LegacyChangeLog(RuntimeError):
    """{gk}:changes holds changes logged without their chg_id (before the chg_id index)."""


def read_state(client: redis.Redis) -> Meta:
    """The current generation and what it was loaded from."""
    return Meta.from_hash(cast(dict[bytes, bytes], client.hgetall(keys.META)))


def read_lease(client: redis.Redis) -> Lease | None:
    """The lease of the snapshot load in progress, None when none is."""
    return Lease.parse(cast(bytes | None, client.get(keys.LOADING)))


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
    refused: list[tuple[int, str]] = field(default_factory=list)  # (origin, code) beyond MAX_PERIODS


def refused_reason(code: str) -> str:
    """Why a row was not loaded when its practitioner's record is full."""
    return f"prac_psn_code {code} would have more than {MAX_PERIODS} periods, the most one record holds: not loaded"


class _Lease:
    """Keeps ``{gk}:loading`` ours while a snapshot loads; renewed from a thread."""

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

    def relabel(self, value: str) -> None:
        """Replace our lease's value (and extend it)."""
        try:
            self._redis.fcall("gk_relabel", 1, keys.LOADING, self.value, value, self._milliseconds)
        except redis.ResponseError as error:
            raise LeaseLost(str(error)) from error
        self.value = value

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
        self._token = secrets.token_hex(8)
        # Bulk-written first: changes are logged but not written here until end_bulk.
        self._lease_value = Lease(self.generation, buckets, watermark_seq, self._token, BULK)
        self._lease = _Lease(client, self._lease_value.format(), lease_seconds)
        # A load killed mid-way leaves its lease to expire: wait as long as it has left, no
        # longer, since a live loader keeps renewing its own.
        deadline: float | None = None
        while not self._lease.acquire():
            if deadline is None:
                remaining_ms = int(client.pttl(keys.LOADING))
                deadline = time.monotonic() + max(remaining_ms, 0) / 1000 + LEASE_WAIT_MARGIN_SECONDS
            elif time.monotonic() > deadline:
                holder = client.get(keys.LOADING)
                raise LoaderBusy(f"another snapshot load holds {keys.LOADING}: {holder!r}")
            time.sleep(LEASE_POLL_SECONDS)
        self._lease.start_renewing()
        self.abandoned = drop_abandoned_generations(client)  # ours is kept: it holds the lease
        self._connection: Connection | None = None
        self._in_flight: Batch | None = None  # the gk_insert call awaiting its answer
        client.sadd(keys.GENERATIONS, self.generation)
        self._write_sentinels()

    @property
    def target(self) -> Target:
        """Where this generation's rows go, for :func:`loader.chunks.pack_batch`."""
        return Target(self.generation, self.buckets)

    def _keys(self, code: str, chg_id: str) -> tuple[str, str]:
        """The bucket of ``code`` and the chg_id index piece of ``chg_id`` in this generation."""
        return (
            keys.bucket_key(self.generation, keys.bucket_of(code, self.buckets)),
            keys.chg_index_key(self.generation, keys.chg_bucket_of(chg_id, self.buckets)),
        )

    def _write_sentinels(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(self.buckets):
            pipe.hset(keys.bucket_key(self.generation, bucket), keys.BUCKET_SENTINEL, b"")
            if bucket % SENTINEL_BATCH == SENTINEL_BATCH - 1:
                pipe.execute()
        pipe.execute()

    def write_bulk(self, commands: Iterable[bytes]) -> int:
        """Send packed HSETs and SET NXs of first rows (loader/bulk.py), pipelined; returns how
        many fields the HSETs added. Only before :meth:`end_bulk`: nothing else writes here
        then, so a SET NX that finds its key there is a bug (RuntimeError)."""
        assert self._lease_value.phase == BULK, "bulk writes end with end_bulk"
        if self._connection is None:
            self._connection = self._redis.connection_pool.get_connection()
        connection = self._connection
        # Each group is sent before the answers to the one before are read: Redis writes one
        # while this process packs the next.
        added = unanswered = 0
        try:
            for group in _groups(commands, BULK_PIPELINE):
                connection.send_packed_command(group, check_health=False)  # type: ignore[no-untyped-call]
                for _ in range(unanswered):
                    added += _bulk_reply(connection.read_response())
                unanswered = len(group)
            for _ in range(unanswered):
                added += _bulk_reply(connection.read_response())
        except BaseException:
            # A refused HSET (Redis out of memory) leaves the answers after it unread: a
            # command sent on this connection again would read one of them as its own.
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        return added

    def end_bulk(self) -> None:
        """End the bulk phase: from now on changes are written into this generation as they
        are applied (those applied meanwhile are in {gk}:changes, for :meth:`replay_changes`)."""
        self._lease_value = replace(self._lease_value, phase="")
        self._lease.relabel(self._lease_value.format())

    def send(self, batch: Batch, stats: WriteStats) -> None:
        """Send one packed gk_insert call of snapshot rows (code, chg_id, one-period record,
        seq): a code's first row as it is, later ones merged by chg_id and seq. Rows Redis
        refuses are counted in ``stats.refused`` by the line they came from.

        The call is sent without waiting for its answer, which is read when the next
        batch is sent (or by :meth:`flush`): Redis merges one batch while Python parses
        the next. One call at a time, so rows are merged in the file's order.
        """
        if self._connection is None:
            self._connection = self._redis.connection_pool.get_connection()
        self.flush(stats)
        self._connection.send_packed_command([batch.command], check_health=False)  # type: ignore[no-untyped-call]
        self._in_flight = batch

    def flush(self, stats: WriteStats) -> None:
        """Wait for the batch in flight and count what it did; send again, and wait for,
        what a call handed back for lack of budget."""
        while self._in_flight is not None and self._connection is not None:
            batch = self._in_flight
            self._in_flight = None
            reply = self._connection.read_response()
            if isinstance(reply, redis.ResponseError):
                raise reply
            inserted, merged, stale, findings, handled, refused = cast(list[Any], reply)
            stats.practitioners += inserted
            stats.merged += merged
            stats.stale += stale
            stats.findings.update(code.decode() for code in findings)
            if refused or handled < len(batch.lines):
                rows = batch.rows()
                for index in refused:  # from 1, in this call's rows
                    stats.refused.append((batch.lines[index - 1], rows[index - 1][0]))
                if handled < len(rows):
                    rest = pack_batch(rows[handled:], batch.lines[handled:], self.target, batch.indexed[handled:])
                    self._connection.send_packed_command([rest.command], check_health=False)  # type: ignore[no-untyped-call]
                    self._in_flight = rest

    def _release_connection(self) -> None:
        if self._connection is not None:
            if self._in_flight is not None:  # abandoned mid-batch: the connection's state is unknown
                self._connection.disconnect()  # type: ignore[no-untyped-call]
            self._redis.connection_pool.release(self._connection)
            self._connection = None
            self._in_flight = None

    def replay_changes(self) -> int:
        """Merge every logged change newer than the snapshot: those applied before this load
        began (later ones were written here by gk_apply already). Returns how many."""
        replayed = 0
        pipe = self._redis.pipeline(transaction=False)
        queued: list[list[changelog.LoggedChange]] = []
        for entry in read_change_log(self._redis):
            newer = [change for change in entry.changes if change.seq > self.watermark_seq]
            if any(not change.chg_id for change in newer):
                raise LegacyChangeLog(
                    f"{keys.CHANGES} holds changes after seq {self.watermark_seq} logged without their chg_id "
                    "(before the chg_id index): load a snapshot whose watermark_seq is at least the last of them"
                )
            if newer:
                self._queue_merge(pipe, newer, queued)
                replayed += len(newer)
            if len(pipe) >= 50:
                self._run_merges(pipe, queued)
        self._run_merges(pipe, queued)
        return replayed

    def _queue_merge(
        self, pipe: Any, changes: list[changelog.LoggedChange], queued: list[list[changelog.LoggedChange]]
    ) -> None:
        bucket_keys = [key for c in changes for key in self._keys(c.code, c.chg_id)]
        arguments = [value for c in changes for value in (c.code, c.chg_id, c.record, c.seq, keys.chg_tag_of(c.chg_id))]
        pipe.fcall("gk_merge", len(bucket_keys), *bucket_keys, self.watermark_seq, *arguments)
        queued.append(changes)

    def _run_merges(self, pipe: Any, queued: list[list[changelog.LoggedChange]]) -> None:
        """Run the queued gk_merge calls, then again what they handed back for lack of budget."""
        while queued:
            sent = list(queued)
            queued.clear()
            for changes, (_, handled) in zip(sent, pipe.execute(), strict=True):
                if handled < len(changes):
                    self._queue_merge(pipe, changes[handled:], queued)

    def count_practitioners(self) -> int:
        """How many codes this generation holds now: its own rows' codes and the codes that
        changes applied meanwhile wrote into it, each once (every bucket's fields but its
        sentinel)."""
        total = 0
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(self.buckets):
            pipe.hlen(keys.bucket_key(self.generation, bucket))
            if bucket % SENTINEL_BATCH == SENTINEL_BATCH - 1:
                total += sum(cast(list[int], pipe.execute()))
        total += sum(cast(list[int], pipe.execute()))
        return total - self.buckets

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
                self._token,
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


def _bulk_reply(reply: Any) -> int:
    """Fields an HSET added, or 0 for a SET NX that wrote its index piece."""
    if isinstance(reply, int):
        return reply
    if reply is None:
        raise RuntimeError("a bulk SET NX found its chg_id index piece there already")
    return 0


def _groups(commands: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """Lists of ``size`` commands (the last one shorter)."""
    iterator = iter(commands)
    while group := list(itertools.islice(iterator, size)):
        yield group


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
    lease = read_lease(client)
    if lease is not None:
        keep.add(lease.generation)
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
    refused: int = 0  # changes whose practitioner already has MAX_PERIODS periods
    findings: set[str] = field(default_factory=set)


class ChangeApplier:
    """Applies change-feed rows to the current generation (and to one being loaded).

    Batches go out one ahead: Redis applies a batch while Python parses the next. Each
    batch is one atomic gk_apply call; one sent with a stale layout (a snapshot switched
    or began meanwhile) is sent again, which is harmless because merges are idempotent.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        load_functions(client)
        self._layout: _Layout | None = None

    def _read_layout(self) -> _Layout:
        state = read_state(self._redis)
        if state.generation is None:
            raise NoSnapshot("no registry snapshot is loaded: load one before applying changes")
        lease = read_lease(self._redis)
        if lease is None or not lease.takes_changes:  # in its bulk phase, a load replays them later
            return _Layout(state.generation, state.buckets, None, 0)
        return _Layout(state.generation, state.buckets, lease.generation, lease.buckets)

    def _command(self, changes: Sequence[EncodedRow]) -> list[str | bytes | int]:
        if self._layout is None:
            self._layout = self._read_layout()
        layout = self._layout
        bucket_keys = [key for code, chg_id, _, _ in changes for key in layout.current_keys(code, chg_id)]
        if layout.loading_generation is not None:
            bucket_keys += [key for code, chg_id, _, _ in changes for key in layout.loading_keys(code, chg_id)]
        command: list[str | bytes | int] = ["FCALL", "gk_apply", 3 + len(bucket_keys), keys.META, keys.LOADING]
        command += [keys.CHANGES, *bucket_keys, layout.name, CHANGE_LOG_LENGTH]
        command += [value for change in changes for value in (*change, keys.chg_tag_of(change[1]))]
        return command

    def apply(self, changes: Iterable[EncodedRow], stats: ApplyStats) -> list[tuple[int, str]]:
        """Apply changes, APPLY_BATCH to a gk_apply call. Returns (position from 0 in the
        order given, code) of the changes refused: their practitioner has MAX_PERIODS periods."""
        connection = self._redis.connection_pool.get_connection()
        in_flight: deque[_Batch] = deque()
        refused: list[tuple[int, str]] = []
        offset = 0
        try:
            for batch in _batched(changes):
                self._send(connection, _Batch(offset, batch), in_flight)
                offset += len(batch)
                while len(in_flight) > 1:
                    self._receive(connection, in_flight, stats, refused)
            while in_flight:
                self._receive(connection, in_flight, stats, refused)
        except BaseException:
            connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be unread
            raise
        finally:
            self._redis.connection_pool.release(connection)
        return sorted(refused)

    def _send(self, connection: Connection, batch: _Batch, in_flight: deque[_Batch]) -> None:
        connection.send_command(*self._command(batch.changes))  # type: ignore[no-untyped-call]
        in_flight.append(batch)

    def _receive(
        self, connection: Connection, in_flight: deque[_Batch], stats: ApplyStats, refused: list[tuple[int, str]]
    ) -> None:
        """Read the oldest batch's answer. A batch sent with a stale layout, or what a call
        handed back for lack of budget, is sent again (merges are idempotent)."""
        reply = self._read(connection)
        batch = in_flight.popleft()
        if reply[0] == -1:
            if batch.attempts >= 5:
                raise RuntimeError("the cache layout kept changing while applying changes")
            self._layout = None
            self._send(connection, replace(batch, attempts=batch.attempts + 1), in_flight)
            return
        applied, stale, findings, handled, refused_indexes = reply
        stats.applied += applied
        stats.stale += stale
        stats.refused += len(refused_indexes)
        stats.findings.update(code.decode() for code in findings)
        refused.extend((batch.offset + index - 1, batch.changes[index - 1][0]) for index in refused_indexes)
        if handled < len(batch.changes):
            self._send(connection, _Batch(batch.offset + handled, batch.changes[handled:]), in_flight)

    @staticmethod
    def _read(connection: Connection) -> list[Any]:
        try:
            reply = connection.read_response()
        except redis.ResponseError as error:
            if "NOSNAPSHOT" in str(error):
                raise NoSnapshot(str(error)) from error
            raise
        return cast(list[Any], reply)


@dataclass(frozen=True)
class _Batch:
    """Changes sent in one gk_apply call, and where they start among those given to apply."""

    offset: int
    changes: tuple[EncodedRow, ...]
    attempts: int = 0  # resent after a stale layout


@dataclass(frozen=True)
class _Layout:
    """Which generations changes go to, and how their buckets are counted."""

    current_generation: int
    buckets: int
    loading_generation: int | None
    loading_buckets: int

    @property
    def name(self) -> str:
        """What gk_apply compares with what it finds, to refuse keys computed for another layout."""
        return f"{self.current_generation}/{self.loading_generation or 0}"

    def current_keys(self, code: str, chg_id: str) -> tuple[str, str]:
        """The current generation's bucket of ``code`` and chg_id index piece of ``chg_id``."""
        return (
            keys.bucket_key(self.current_generation, keys.bucket_of(code, self.buckets)),
            keys.chg_index_key(self.current_generation, keys.chg_bucket_of(chg_id, self.buckets)),
        )

    def loading_keys(self, code: str, chg_id: str) -> tuple[str, str]:
        """The same in the generation being loaded."""
        assert self.loading_generation is not None
        return (
            keys.bucket_key(self.loading_generation, keys.bucket_of(code, self.loading_buckets)),
            keys.chg_index_key(self.loading_generation, keys.chg_bucket_of(chg_id, self.loading_buckets)),
        )


def _batched(changes: Iterable[EncodedRow]) -> Iterator[tuple[EncodedRow, ...]]:
    """Tuples of APPLY_BATCH changes (itertools.batched arrives in Python 3.12)."""
    iterator = iter(changes)
    while batch := tuple(itertools.islice(iterator, APPLY_BATCH)):
        yield batch


def read_change_log(client: redis.Redis, after: bytes = b"-", page: int = 1000) -> Iterator[changelog.Entry]:
    """Every entry of {gk}:changes after ``after`` (exclusive), oldest first, read raw."""
    connection = client.connection_pool.get_connection()
    try:
        start = after
        while True:
            lower = start if start == b"-" else b"(" + start
            connection.send_command("XRANGE", keys.CHANGES, lower, "+", "COUNT", page)  # type: ignore[no-untyped-call]
            entries = cast(list[list[Any]], connection.read_response())
            for entry_id, fields in entries:
                yield changelog.parse_entry(entry_id, fields)
            if len(entries) < page:
                return
            start = entries[-1][0]
    finally:
        client.connection_pool.release(connection)
