"""The decision record's writer: every decision to PostgreSQL, off the hot path, through a
disk spool when the database is away.

- An RPC hands its decision to :meth:`AuditLog.record` (no await, no I/O) and answers.
- A background task drains the queue in batches and writes each batch to the database in
  one transaction (one statement: the batch as one JSON document, expanded into rows by
  the database).
- A batch the database does not take goes to this process's spool file, one JSON line per
  batch, fsynced before the next; once the database answers again the spool is replayed
  and emptied. Spool files of processes that are gone (a crash, or a SIGTERM while the
  database was away) are replayed by the next process to start with the same spool directory.
- No duplicates: a batch keeps its id from the moment it is formed, in the spool too, and
  its transaction first inserts that id into ``audit_batches``; a batch whose id is already
  there (a write that timed out after it committed, a replay repeated after a crash) is
  skipped.
- When a batch can be neither written nor spooled, the log stops accepting decisions
  (``record`` answers False, the servicer applies the region policy: refuse with
  UNAVAILABLE or settle unenforced) until a batch gets through again; memory is bounded by
  ``max_queued`` decisions.

What a crash can lose: the decisions in memory, at most ``max_queued`` of them and in
practice one batch being formed or written (``batch_size`` decisions or ``linger_seconds``
of them). A batch the database committed, or the spool fsynced, survives. SIGTERM loses
nothing that can be written: ``close`` drains the queue to the database or the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import psycopg

from gatekeeper import defaults
from gatekeeper.audit.database import LATEST_VERSION, SchemaError, partition_statements
from gatekeeper.audit.records import Batch, Entry, encode
from gatekeeper.audit.spool import Spool
from gatekeeper.core.cst import CST
from gatekeeper.core.rules import Claim, ClaimDecision, ClaimVerdict, Reason, Verdict

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
# How long a batch waits for more decisions: fewer, fuller batches (one transaction each).
DEFAULT_LINGER_SECONDS = 0.1
DEFAULT_RETRY_SECONDS = 1.0  # how often a spool is offered to the database again


def _names(numbered: type[enum.IntEnum]) -> list[str]:
    """The names of an enum numbered 1, 2, …: a SQL array indexed by the number."""
    members = sorted(numbered)
    assert [m.value for m in members] == list(range(1, len(members) + 1)), numbered
    return [m.name for m in members]


# A batch's entries go to the database as one JSON document (one encoder call for the whole
# batch, bench/results/audit-driver.md), expanded there into the decision and item rows in
# one statement: the worker builds no row, no datetime and no per-row COPY call. Entries are
# arrays in field order (records.Entry, rules.Claim/Item/ClaimDecision/ItemDecision).
_WRITE_ENTRIES = """
WITH entries AS (
    SELECT e->>0 AS decision_id, e->1 AS claim, e->2 AS decision, e->>3 AS registry_version,
           'epoch'::timestamptz + (e->>4)::bigint * interval '1 millisecond' AS decided_at
    FROM jsonb_array_elements(%(entries)s::jsonb) AS e
), decided AS (
    INSERT INTO decisions (decided_at, decision_id, claim_id, fixmedins_code, registry_version, verdict,
                           enforced, allowed_amount_fen, blocked_amount_fen, batch_id)
    SELECT decided_at, decision_id, claim->>0, claim->>1, registry_version,
           (%(claim_verdicts)s::text[])[(decision->>0)::int], (decision->>4)::boolean,
           (decision->>2)::bigint, (decision->>3)::bigint, %(batch_id)s
    FROM entries
)
INSERT INTO decision_items (decided_at, decision_id, item_index, fixmedins_code, claim_id, feedetl_sn,
                            fee_ocur_time, amount_fen, emergency, bilg_dr_codg, orders_dr_code, verdict,
                            reason, prac_psn_code, enforced)
SELECT decided_at, decision_id, (position - 1)::int, claim->>1, claim->>0, item->>0,
       to_timestamp((item->>1)::bigint), (made->>6)::bigint, (item->>4)::boolean,
       item->3->>0, item->3->>1, (%(verdicts)s::text[])[(made->>1)::int],
       (%(reasons)s::text[])[(made->>2)::int], made->>3, (made->>5)::boolean
FROM entries,
     ROWS FROM (jsonb_array_elements(claim->2), jsonb_array_elements(decision->1))
         WITH ORDINALITY AS items(item, made, position)
"""
_NAMES = {"claim_verdicts": _names(ClaimVerdict), "verdicts": _names(Verdict), "reasons": _names(Reason)}


class DecisionLog(Protocol):
    """Where the servicer hands decisions; must not block or do I/O."""

    def record(
        self, decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
    ) -> bool:
        """Take one decision for the record; False when it cannot be recorded now."""
        ...


class RecordUnavailable(Exception):
    """The record store did not take a batch (now)."""


class RecordStore(Protocol):
    """Where batches are written for good."""

    async def write(self, batch: Batch) -> bool:
        """Write the batch atomically; False when it was already written (a replay).
        RecordUnavailable when the store cannot take it now."""
        ...

    async def reachable(self) -> bool:
        """True when the store answers now (cheap: a spool is read only after this)."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


def cst_day(epoch_seconds: float) -> date:
    """The China Standard Time day of a moment: the partition its decision goes to."""
    return datetime.fromtimestamp(epoch_seconds, CST).date()


def _days_of(batch: Batch) -> set[date]:
    """Every day from the batch's first decision to its last: the partitions it needs."""
    moments = [entry.decided_at_ms for entry in batch.entries]
    first, last = cst_day(min(moments) / 1000), cst_day(max(moments) / 1000)
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


async def _has_schema_table(connection: psycopg.AsyncConnection) -> bool:
    cursor = await connection.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cursor.fetchone()
    return bool(row and row[0])


class PostgresRecordStore:
    """Writes each batch in one transaction: its id into ``audit_batches`` (the duplicate
    check), then its entries, expanded into decision and item rows by the database. One
    connection, opened on demand and
    dropped on any error; each statement bounded by ``timeout_seconds``."""

    def __init__(self, url: str, timeout_seconds: float = defaults.DATABASE_TIMEOUT_SECONDS) -> None:
        self._url = url
        self._timeout = timeout_seconds
        self._connection: psycopg.AsyncConnection | None = None
        self._days: set[date] = set()  # days whose partitions are known to exist

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._connection is None or self._connection.closed:
            milliseconds = int(self._timeout * 1000)
            self._connection = await psycopg.AsyncConnection.connect(
                self._url,
                connect_timeout=max(1, round(self._timeout)),
                options=f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
                autocommit=True,
            )
            self._days.clear()
            cursor = await self._connection.execute(
                "SELECT coalesce(max(version), 0) FROM schema_version"
                if await _has_schema_table(self._connection)
                else "SELECT 0"
            )
            row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            if version != LATEST_VERSION:
                await self.close()
                raise SchemaError(
                    f"the decision record's schema is at version {version}, this gatekeeper writes "
                    f"{LATEST_VERSION}: run `gatekeeper audit migrate`"
                )
        return self._connection

    async def _ensure_partitions(self, connection: psycopg.AsyncConnection, days: set[date]) -> None:
        missing = days - self._days
        if not missing:
            return
        # Tomorrow's too, so that midnight never waits for a CREATE TABLE.
        wanted = missing | {day + timedelta(days=1) for day in missing}
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(7424002)")
            for day in sorted(wanted):
                for statement in partition_statements(day):
                    await connection.execute(statement)
        self._days |= wanted

    async def write(self, batch: Batch) -> bool:
        try:
            connection = await self._connect()
            await self._ensure_partitions(connection, _days_of(batch))
            async with connection.transaction():
                cursor = await connection.execute(
                    "INSERT INTO audit_batches (batch_id) VALUES (%s) ON CONFLICT DO NOTHING", [batch.batch_id]
                )
                if cursor.rowcount == 0:
                    return False
                entries = encode(batch.entries).decode()
                await connection.execute(_WRITE_ENTRIES, {"entries": entries, "batch_id": batch.batch_id, **_NAMES})
        except (psycopg.Error, OSError, SchemaError) as error:
            await self.close()
            raise RecordUnavailable(
                str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            ) from error
        return True

    async def reachable(self) -> bool:
        try:
            connection = await self._connect()
            await connection.execute("SELECT 1")
        except (psycopg.Error, OSError, SchemaError):
            await self.close()
            return False
        return True

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


@dataclass
class AuditStats:
    """Counters for metrics and tests."""

    taken: int = 0  # decisions handed to the record
    appended: int = 0  # decisions written to the database
    duplicates: int = 0  # batches the database already had (a replay of a committed write)
    spooled: int = 0  # batches written to the spool
    replayed: int = 0  # batches replayed from a spool
    write_failures: int = 0  # batches the database did not take
    refused: int = 0  # decisions not taken: neither the database nor the spool could take them


class AuditLog:
    """Takes decisions without waiting and gets them into the record, losing none it took."""

    def __init__(
        self,
        store: RecordStore,
        spool: Spool,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        max_queued: int = defaults.AUDIT_MAX_QUEUED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.spool = spool
        self._batch_size = batch_size
        self._linger = linger_seconds
        self._retry = retry_seconds
        self._max_queued = max_queued
        self._clock = clock
        # Decisions taken, oldest first: a deque rather than an asyncio.Queue, whose put and
        # get are several calls each, on every decision.
        self._entries: deque[Entry] = deque()
        self._arrived = asyncio.Event()  # set when the first decision arrives in an empty deque (or on close)
        self._batch_queued = asyncio.Event()  # set when a whole batch is taken (or on close)
        self._task: asyncio.Task[None] | None = None
        self._orphans_pending = True  # spools of processes gone: looked for at start
        self._last_attempt = -float("inf")  # of a replay, or of a spool write that failed
        self._closing = False
        self._store_failing = False
        self._unsaved: list[Batch] = []  # formed, neither written nor spooled yet
        # False while a batch could be neither written nor spooled: decisions are refused
        # (the servicer applies the region policy) rather than held without bound.
        self.accepting = True
        self.stats = AuditStats()

    @classmethod
    def from_url(cls, url: str, spool_directory: Path, timeout_seconds: float) -> AuditLog:
        """An audit log writing to the database at ``url``, spooling to ``spool_directory``."""
        return cls(PostgresRecordStore(url, timeout_seconds), Spool(spool_directory))

    @property
    def recording(self) -> bool:
        """True while decisions are taken: the record or the spool takes batches, and the
        queue has room. Health is NOT_SERVING otherwise."""
        return self.accepting and len(self._entries) < self._max_queued

    @property
    def queued(self) -> int:
        """Decisions taken and not yet written or spooled."""
        return len(self._entries) + sum(len(batch.entries) for batch in self._unsaved)

    def record(
        self, decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
    ) -> bool:
        """Take one decision (the record is built and written later, by the writer task);
        False, taking nothing, while decisions cannot be recorded or the queue is full."""
        entries = self._entries
        if not self.accepting or len(entries) >= self._max_queued:
            self.stats.refused += 1
            return False
        entries.append(Entry(decision_id, claim, decision, registry_version, int(decided_at * 1000)))
        queued = len(entries)
        if queued == 1:
            self._arrived.set()  # the writer waits for a first decision
        if queued >= self._batch_size:
            self._batch_queued.set()  # the writer stops lingering
        self.stats.taken += 1
        return True

    def start(self) -> None:
        """Open the spool and start the writer (needs a running event loop)."""
        if self._task is None:
            try:
                self.spool.open()
            except OSError as error:
                log.error("audit: cannot open the spool in %s (%s)", self.spool.directory, error)
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write or spool every decision taken so far, then stop. Call once no more come."""
        if self._task is not None:
            self._closing = True  # a replay in progress stops at its next batch; the next start resumes it
            self._arrived.set()  # no waiting for decisions that will not come, nor lingering
            self._batch_queued.set()
            await self._task
            self._task = None
        self.spool.close()
        await self._store.close()
        if self.spool.depth:
            log.warning(
                "audit: %d batch(es) left in %s for the next start to replay", self.spool.depth, self.spool.path
            )

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            pending, stopping = await self._collect()
            try:
                if pending:
                    self._unsaved.append(Batch(uuid.uuid4().hex, tuple(pending)))
                if self._replay_due() and not stopping:
                    await self._replay()
                await self._save()
            except Exception:  # a bug: keep the writer alive for the decisions still to come
                log.exception("audit writer failed; carrying on")
        if self._unsaved:
            records = sum(len(batch.entries) for batch in self._unsaved)
            log.error("audit: %d decision(s) neither written nor spooled (spool unwritable): lost", records)

    async def _save(self) -> None:
        """Write the batches in hand to the database, or spool them while it is away (or
        while a spool waits: one place to replay from, in order). A batch the spool cannot
        take either (a full disk) stays in hand, tried again, and decisions are refused
        meanwhile."""
        while self._unsaved:
            batch = self._unsaved[0]
            if self.spool.depth or not await self._write(batch):
                try:
                    await asyncio.to_thread(self.spool.append, batch)
                except OSError:
                    if self.accepting:
                        log.error(
                            "audit: neither the database nor the spool %s takes decisions; refusing new ones, "
                            "holding %d",
                            self.spool.path or self.spool.directory,
                            self.queued,
                        )
                    self.accepting = False
                    self._last_attempt = self._clock()  # try again after the retry interval, not at once
                    return
                self.stats.spooled += 1
            self._unsaved.pop(0)
            if not self.accepting:
                self.accepting = True
                log.warning("audit: decisions are recorded again")

    def _waiting(self) -> bool:
        """Something to offer the database (or the spool) again later."""
        return self._orphans_pending or self.spool.depth > 0 or bool(self._unsaved)

    def _replay_due(self) -> bool:
        return (self._orphans_pending or self.spool.depth > 0) and self._clock() - self._last_attempt >= self._retry

    async def _collect(self) -> tuple[list[Entry], bool]:
        """Up to a batch of decisions: wait for the first (only so long when a replay is
        due), then linger a little for more, or until a batch is queued. True once close()
        has asked for the rest and none is left. The writer sleeps through the linger:
        decisions queued meanwhile do not each wake it."""
        entries = self._entries
        if not entries and not self._closing:
            waiting = None
            if self._waiting():  # until the next replay is due (at once, the first time)
                waiting = max(0.0, self._retry - (self._clock() - self._last_attempt))
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), waiting)
            except TimeoutError:
                return [], False
        # Not once close() has asked for the rest: clearing would drop its wake-up.
        if entries and not self._closing and len(entries) < self._batch_size:
            self._batch_queued.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._batch_queued.wait(), self._linger)
        popleft = entries.popleft
        pending = [popleft() for _ in range(min(len(entries), self._batch_size))]
        return pending, self._closing and not entries

    async def _write(self, batch: Batch) -> bool:
        """Write a batch to the database; False when it did not take it (now)."""
        try:
            written = await self._store.write(batch)
        except RecordUnavailable as error:
            self.stats.write_failures += 1
            if not self._store_failing:
                self._store_failing = True
                log.warning("audit: the database did not take a batch (%s); spooling to %s", error, self.spool.path)
            return False
        if self._store_failing:
            self._store_failing = False
            log.info("audit: the database takes batches again")
        if written:
            self.stats.appended += len(batch.entries)
        else:
            self.stats.duplicates += 1
        return True

    async def _replay(self) -> None:
        """Offer spooled batches to the database: orphans' first, then this process's own.
        Nothing is read from disk while the database does not answer: a spool that grows
        during a long outage is not parsed again every retry."""
        self._last_attempt = self._clock()
        if not await self._store.reachable():
            return
        orphans = await asyncio.to_thread(lambda: list(self.spool.orphans()))
        complete = True
        for orphan in orphans:
            if complete and await self._append_all(orphan.batches):
                await asyncio.to_thread(orphan.remove)
                log.info("audit: replayed %d batch(es) from %s", len(orphan.batches), orphan.path)
            else:
                complete = False
                orphan.release()
        if not complete:
            return
        self._orphans_pending = False
        if self.spool.depth:
            batches = await asyncio.to_thread(self.spool.pending)
            if await self._append_all(batches):
                await asyncio.to_thread(self.spool.empty)
                log.info("audit: replayed %d spooled batch(es)", len(batches))

    async def _append_all(self, batches: list[Batch]) -> bool:
        for batch in batches:
            if self._closing or not await self._write(batch):
                return False
            self.stats.replayed += 1
        return True
