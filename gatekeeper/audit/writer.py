"""The decision audit: every decision to a Redis stream, off the hot path, through a disk spool when Redis is away.

- An RPC hands its decision to :meth:`AuditLog.record` (no await, no I/O) and answers.
- A background task drains the queue in batches and appends each batch to the stream
  ``gk:{audit}`` with one call of the Redis Function ``gk_audit_append``.
- A batch Redis does not take goes to this process's spool file, one JSON line per batch,
  fsynced before the next; once Redis answers again the spool is replayed and emptied.
  Spool files of processes that are gone (a crash, or a SIGTERM while Redis was away) are
  replayed by the next process to start with the same spool directory.
- No duplicates: a batch keeps its id from the moment it is formed, in the spool too, and
  the function appends a batch only if its id is not among those appended in the last
  ``dedup_seconds`` (the sorted set ``gk:{audit}:batches``), checking and appending in one
  atomic call. A batch whose write timed out after Redis had taken it, or that was
  replayed just before a crash, is therefore skipped when replayed again.

What a crash can lose: the records still in memory, at most one batch being formed or
written (``batch_size`` records or ``linger_seconds`` of decisions). Everything a batch
write or the spool acknowledged survives. SIGTERM loses nothing: ``close`` drains the queue
to Redis or to the spool before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from gatekeeper.audit.records import Batch, audit_record, encode_record
from gatekeeper.audit.spool import Spool
from gatekeeper.cache import keys
from gatekeeper.cache.client import redis_client
from gatekeeper.core.rules import Claim, ClaimDecision

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
# How long a batch waits for more decisions: fewer, fuller batches, so at most 10 a second
# per worker, each costing its id in the dedup set for the window below.
DEFAULT_LINGER_SECONDS = 0.1
DEFAULT_RETRY_SECONDS = 1.0  # how often a spool is offered to Redis again
# How long a batch id is remembered (about 100 bytes each in Redis): a spooled batch
# replayed later than this after Redis took it (its write timed out, yet it had arrived)
# would be appended a second time.
DEFAULT_DEDUP_SECONDS = 24 * 3600.0
FUNCTION_NAME = "gk_audit_append"
FUNCTIONS = resources.files("gatekeeper.audit").joinpath("audit.lua").read_text(encoding="utf-8")


class DecisionLog(Protocol):
    """Where the servicer hands decisions; must not block or do I/O."""

    def record(
        self, decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
    ) -> None:
        """Take one decision for the audit."""
        ...


# --- The spool -----------------------------------------------------------------------------

_Pending = tuple[str, Claim, ClaimDecision, str, float]
_STOP = object()


@dataclass
class AuditStats:
    """Counters for metrics and tests."""

    appended: int = 0  # records appended to the stream
    duplicates: int = 0  # batches Redis already had (a replay of an acknowledged write)
    spooled: int = 0  # batches written to the spool
    replayed: int = 0  # batches replayed from a spool
    write_failures: int = 0


class AuditLog:
    """Takes decisions without waiting and gets them into the stream, losing none."""

    def __init__(
        self,
        client: redis.Redis,
        spool: Spool,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        dedup_seconds: float = DEFAULT_DEDUP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self.spool = spool
        self._batch_size = batch_size
        self._linger = linger_seconds
        self._retry = retry_seconds
        self._dedup_ms = int(dedup_seconds * 1000)
        self._clock = clock
        # Unbounded: a decision is never refused or dropped for want of room. The writer
        # drains it to the spool when Redis is slow, so it stays short.
        self._queue: asyncio.Queue[_Pending | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._orphans_pending = True  # spools of processes gone: looked for at start
        self._last_attempt = -float("inf")  # of a replay, or of a spool write that failed
        self._closing = False
        self._redis_failing = False
        self._unsaved: list[Batch] = []  # formed, neither appended nor spooled yet
        self.stats = AuditStats()

    @classmethod
    def from_url(cls, url: str, spool_directory: Path, timeout_seconds: float | None) -> AuditLog:
        """An audit log writing to Redis at ``url`` (its own connections), spooling to ``spool_directory``."""
        return cls(redis_client(url, timeout_seconds), Spool(spool_directory))

    @property
    def queued(self) -> int:
        """Decisions taken and not yet appended or spooled."""
        return self._queue.qsize()

    def record(
        self, decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
    ) -> None:
        """Take one decision; the record is built and written later, by the writer task."""
        self._queue.put_nowait((decision_id, claim, decision, registry_version, decided_at))

    def start(self) -> None:
        """Open the spool and start the writer (needs a running event loop)."""
        if self._task is None:
            self.spool.open()
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write or spool every decision taken so far, then stop. Call once no more come."""
        if self._task is not None:
            self._closing = True  # a replay in progress stops at its next batch; the next start resumes it
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self.spool.close()
        await self._redis.aclose()
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
                    self._unsaved.append(Batch(uuid.uuid4().hex, tuple(audit_record(*p) for p in pending)))
                if self._replay_due() and not stopping:
                    await self._replay()
                await self._save()
            except Exception:  # a bug: keep the writer alive for the decisions still to come
                log.exception("audit writer failed; carrying on")
        if self._unsaved:
            records = sum(len(batch.records) for batch in self._unsaved)
            log.error("audit: %d decision(s) neither appended nor spooled (spool unwritable): lost", records)

    async def _save(self) -> None:
        """Append the batches in hand to Redis, or spool them while Redis is away (or while a
        spool waits: one place to replay from, in order). A batch the spool cannot take
        either (a full disk) stays in hand and is tried again."""
        while self._unsaved:
            batch = self._unsaved[0]
            if self.spool.depth or not await self._append(batch):
                try:
                    await asyncio.to_thread(self.spool.append, batch)
                except OSError:
                    log.exception(
                        "audit: cannot write the spool %s; holding %d batch(es)", self.spool.path, len(self._unsaved)
                    )
                    self._last_attempt = self._clock()  # try again after the retry interval, not at once
                    return
                self.stats.spooled += 1
            self._unsaved.pop(0)

    def _waiting(self) -> bool:
        """Something to offer Redis (or the spool) again later."""
        return self._orphans_pending or self.spool.depth > 0 or bool(self._unsaved)

    def _replay_due(self) -> bool:
        return (self._orphans_pending or self.spool.depth > 0) and self._clock() - self._last_attempt >= self._retry

    async def _collect(self) -> tuple[list[_Pending], bool]:
        """Up to a batch of decisions: wait for the first (only so long when a replay is
        due), then linger a little for more. True when the stop marker was reached."""
        waiting = None
        if self._waiting():  # until the next replay is due (at once, the first time)
            waiting = max(0.0, self._retry - (self._clock() - self._last_attempt))
        try:
            first = await asyncio.wait_for(self._queue.get(), waiting)
        except TimeoutError:
            return [], False
        if first is _STOP:
            return [], True
        pending: list[_Pending] = [first]  # type: ignore[list-item]  # not the marker
        deadline = asyncio.get_running_loop().time() + self._linger
        while len(pending) < self._batch_size:
            try:
                entry = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if entry is _STOP:
                return pending, True
            pending.append(entry)  # type: ignore[arg-type]  # not the marker
        return pending, False

    async def _append(self, batch: Batch) -> bool:
        """Append a batch to the stream; False when Redis did not take it (now)."""
        arguments: list[str | bytes | int] = [batch.batch_id, self._dedup_ms]
        for record in batch.records:
            arguments += [record.decision_id, record.claim_id, record.fixmedins_code, encode_record(record)]
        try:
            try:
                appended = await self._redis.fcall(FUNCTION_NAME, 2, keys.AUDIT, keys.AUDIT_BATCHES, *arguments)
            except ResponseError as error:
                if "function not found" not in str(error).lower():
                    raise
                # A Redis that restarted without persistence has lost its functions.
                await self._redis.function_load(FUNCTIONS, replace=True)
                appended = await self._redis.fcall(FUNCTION_NAME, 2, keys.AUDIT, keys.AUDIT_BATCHES, *arguments)
        except (RedisError, OSError) as error:
            self.stats.write_failures += 1
            if not self._redis_failing:
                self._redis_failing = True
                log.warning("audit: Redis did not take a batch (%s); spooling to %s", error, self.spool.path)
            return False
        if self._redis_failing:
            self._redis_failing = False
            log.info("audit: Redis takes batches again")
        if int(appended) == 0:
            self.stats.duplicates += 1
        self.stats.appended += int(appended)
        return True

    async def _replay(self) -> None:
        """Offer spooled batches to Redis: orphans' first, then this process's own."""
        self._last_attempt = self._clock()
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
            if self._closing or not await self._append(batch):
                return False
            self.stats.replayed += 1
        return True
