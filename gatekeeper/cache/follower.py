"""The change follower: reads ``{gk}:changes`` and keeps a near cache coherent with it.

Each change entry drops the codes it names; a switch entry drops everything. A lost
connection, or entries trimmed before they were read, makes the cache untrusted (lookups
read through to Redis) until the follower has caught up again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from redis.backoff import AbstractBackoff, EqualJitterBackoff

from gatekeeper.cache import changelog, keys
from gatekeeper.cache.client import AsyncClient
from gatekeeper.cache.layout import Meta
from gatekeeper.cache.nearcache import NearCache
from gatekeeper.core.eligibility import StoreStats
from gatekeeper.ops.tasks import stop_task

log = logging.getLogger(__name__)

BLOCK_MILLISECONDS = 1_000
# The stream answers every read within BLOCK_MILLISECONDS, entries or not: a follower that
# has heard nothing for three of them has silently stopped, whatever it believes.
HEARD_WITHIN_SECONDS = 3 * BLOCK_MILLISECONDS / 1000
STREAM_CLIENT_NAME = "gatekeeper-near-cache"  # CLIENT LIST shows which connections follow {gk}:changes
LAGS_KEPT = 100_000


def reconnect_backoff() -> AbstractBackoff:
    """Between 25 ms and 2 s after a failure, doubling, half of it jittered."""
    return EqualJitterBackoff(cap=2.0, base=0.05)


class ChangeFollower:
    """Follows ``{gk}:changes`` on its own connection and applies each entry to ``cache``.

    ``trusted`` says whether the cache may answer lookups: the follower has read what is
    loaded and has missed nothing since. ``seen_seq`` is the highest registry seq the
    cache reflects; ``generation`` and ``snapshot_id`` what it was loaded from.
    """

    def __init__(
        self,
        stream_client: AsyncClient,
        cache: NearCache,
        stats: StoreStats,
        backoff: AbstractBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream_client
        # The stream is read raw: a change entry repeats its field names (changelog.py).
        for command in ("XREAD", "XREVRANGE", "XINFO STREAM"):
            self._stream.response_callbacks[command] = lambda response, **_: response
        self.cache = cache
        self.stats = stats
        self._backoff = reconnect_backoff() if backoff is None else backoff
        self._clock = clock
        self.last_heard = -float("inf")  # when the stream last answered a read
        self.trusted = False
        self.snapshot_id = ""
        self.generation = 0
        self.seen_seq = 0  # every change up to this seq has been applied to the cache
        self.caught_up = asyncio.Event()
        self._last_id = b"0-0"
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Milliseconds from a change being logged (its stream id) to this worker dropping it.
        self._lags_ms: deque[float] = deque(maxlen=LAGS_KEPT)

    def start(self) -> None:
        """Start following (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="near-cache-follower")

    async def close(self) -> None:
        """Stop following and close the stream connection."""
        # The flag as well as the cancel: the Redis client can swallow a cancellation that
        # lands mid-command, and the follower would then read on forever.
        self._closing = True
        if self._task is not None:
            await stop_task(self._task)
        await self._stream.aclose()

    def hearing(self) -> bool:
        """True while trusted and the stream answered lately: notifications are flowing, so
        cached entries are coherent however old they are."""
        return self.trusted and self._clock() - self.last_heard < HEARD_WITHIN_SECONDS

    def take_lags_ms(self) -> list[float]:
        """The notification lags measured since the last call."""
        lags = list(self._lags_ms)
        self._lags_ms.clear()
        return lags

    def _distrust(self, why: str, level: int = logging.WARNING) -> None:
        if self.trusted:
            log.log(level, "near cache dropped: %s", why)
        self.trusted = False
        self.caught_up.clear()
        self.cache.retire()  # no longer used for ordinary lookups; held for degraded mode
        self.stats.clears += 1

    async def _catch_up(self) -> None:
        """(Re)start following: remember where the stream ends, then what is loaded."""
        latest = cast(
            list[Any],
            await self._stream.execute_command("XREVRANGE", keys.CHANGES, "+", "-", "COUNT", 1),
        )
        self._last_id = latest[0][0] if latest else b"0-0"
        meta = Meta.from_hash(cast(dict[bytes, bytes], await self._stream.hgetall(keys.META)))
        self.generation = meta.generation or 0
        self.snapshot_id = meta.snapshot_id
        self.seen_seq = meta.applied_seq
        self.cache.retire()  # not trusted until re-read; still held, should Redis go away again
        self.trusted = meta.loaded
        self.last_heard = self._clock()
        if self.trusted:
            self.caught_up.set()

    async def _missed_entries(self) -> bool:
        info = cast(
            dict[bytes, Any] | list[Any],
            await self._stream.execute_command("XINFO STREAM", keys.CHANGES),
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
        self._lags_ms.append(time.time() * 1000 - changelog.stream_id(entry.entry_id)[0])
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
                reply = await self._stream.execute_command(
                    "XREAD", "COUNT", 1000, "BLOCK", BLOCK_MILLISECONDS, "STREAMS", keys.CHANGES, self._last_id
                )
                self.last_heard = self._clock()
                switched = False
                # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
                streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply or ()]
                for entries in streams:
                    for entry_id, fields in entries:
                        if not self._apply(changelog.parse_entry(entry_id, fields)):
                            switched = True
                if switched:
                    # Routine (a daily snapshot): nothing for the on-call to look at.
                    self._distrust("the registry snapshot switched", logging.INFO)
                    self.cache.clear()  # a new snapshot: nothing held from the old one is kept
                elif reply and await self._missed_entries():
                    self._distrust("change notifications were trimmed before they were read")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a lost connection or anything else: trust nothing
                self.stats.redis_error("changes")
                self._distrust(f"change notifications unavailable ({error})")
                failures += 1
                await asyncio.sleep(self._backoff.compute(failures))
