"""Follow the registry's HTTP change feed, resuming from the seq stored in Redis; one
``follow`` at a time applies changes (the follow lease), any other stands by."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import cast

import redis
from redis.backoff import FullJitterBackoff

from gatekeeper.cache import keys
from loader.cache import ApplyStats, ChangeApplier, NoSnapshot, read_state, refused_reason
from loader.feed import FeedPage, MalformedPage, changes_url, check_paging, parse_page
from loader.feed_client import DEFAULT_MAX_PAGE_BYTES, DEFAULT_TIMEOUT_SECONDS, FeedError, get_page, origin_of
from loader.quarantine import Quarantine
from loader.rows import EncodedRow, RowError, encode_change

log = logging.getLogger(__name__)
# 2**30 times the initial backoff is past any cap; a higher exponent overflows a float.
_MAX_BACKOFF_EXPONENT = 30
DEFAULT_LEASE_SECONDS = 15.0


@dataclass(frozen=True)
class FollowOptions:
    """How ``follow`` polls, bounds its requests and backs off."""

    limit: int = 1_000  # changes per request
    poll_seconds: float = 1.0  # wait when the feed has nothing more
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # a whole request, body included
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # A follow that stops renewing the follow lease (it died, or is cut off) is taken over
    # by a standby this long after its last renewal.
    lease_seconds: float = DEFAULT_LEASE_SECONDS


@dataclass
class FollowStats:
    """What a follow run did."""

    requests: int = 0
    errors: int = 0  # requests that brought no usable page, refused pages included
    refused_pages: int = 0  # answers that were not a valid page (format or paging)
    bad_rows: int = 0
    truncated_rows: int = 0  # applied with a field cut to its limit (and reported)
    applied: ApplyStats = field(default_factory=ApplyStats)
    after: int = 0
    redis_errors: int = 0  # pages whose writes Redis failed (a failover, a restart): sent again
    standby_waits: int = 0  # turns spent waiting while another follow held the lease


def fetch_page(
    base_url: str, after: int, options: FollowOptions = FollowOptions(), stop: threading.Event | None = None
) -> FeedPage:
    """One page of changes after ``after``, its paging checked; FeedError if the feed did not
    answer in time and size, MalformedPage if the answer is not a valid page."""
    url = changes_url(base_url, after, options.limit)
    try:
        body = get_page(
            url, timeout=options.timeout_seconds, max_bytes=options.max_page_bytes, stop=stop or threading.Event()
        )
    except FeedError as error:
        raise FeedError(f"{url}: {error}") from None
    try:
        page = parse_page(body)
        check_paging(page, after)
    except MalformedPage as error:
        raise MalformedPage(f"{url}: {error}") from None
    return page


class FollowLease:
    """``{gk}:following``: the ``follow`` applying changes holds it and renews it every turn;
    another waits as its standby, and takes it once it lapses (the holder stopped or died)."""

    def __init__(self, client: redis.Redis, seconds: float) -> None:
        self._redis = client
        self.value = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
        self._milliseconds = max(1, int(seconds * 1000))

    def hold(self) -> bool:
        """Take the lease when it is free, or extend it when it is ours; False while another holds it."""
        if self._redis.set(keys.FOLLOWING, self.value, nx=True, px=self._milliseconds):
            return True
        return bool(self._redis.fcall("gk_renew", 1, keys.FOLLOWING, self.value, self._milliseconds))

    def holder(self) -> str:
        value = cast(bytes | None, self._redis.get(keys.FOLLOWING))
        return value.decode(errors="replace") if value else "nobody now"

    def release(self) -> None:
        if self._redis.get(keys.FOLLOWING) == self.value.encode():
            self._redis.delete(keys.FOLLOWING)


def starting_seq(client: redis.Redis) -> int:
    """Where to resume: the stored cursor, never before the loaded snapshot's watermark."""
    cursor = client.get(keys.FOLLOW_CURSOR)
    return max(int(cursor) if cursor else 0, read_state(client).watermark_seq)


def follow(
    client: redis.Redis,
    base_url: str,
    stop: threading.Event,
    quarantine: Quarantine,
    options: FollowOptions = FollowOptions(),
) -> FollowStats:
    """Pull and apply changes until ``stop`` is set; back off on errors, resume on restart.

    A request in flight is abandoned as soon as ``stop`` is set; a page in hand is applied
    first. A refused page is never applied and never moves the stored cursor. Changes are
    fetched and applied only while this follow holds the follow lease (:class:`FollowLease`);
    it is released on the way out.
    """
    origin_of(base_url)  # FeedError now for a URL that can never work, not a retry forever
    stats = FollowStats(after=starting_seq(client))
    log.info("following %s after seq %d", base_url, stats.after)
    lease = FollowLease(client, options.lease_seconds)
    try:
        _follow_while_held(client, base_url, stop, quarantine, options, stats, lease)
    finally:
        with contextlib.suppress(redis.RedisError):
            lease.release()
    return stats


def _follow_while_held(
    client: redis.Redis,
    base_url: str,
    stop: threading.Event,
    quarantine: Quarantine,
    options: FollowOptions,
    stats: FollowStats,
    lease: FollowLease,
) -> None:
    applier = ChangeApplier(client)
    # Full jitter keeps many loaders from retrying in step.
    backoff = FullJitterBackoff(cap=options.backoff_max_seconds, base=options.backoff_initial_seconds)
    failures = 0
    redis_failures = 0
    standing_by = False
    while not stop.is_set():
        if redis_failures:
            try:
                client.connection_pool.disconnect()  # for a cluster, the next connection finds the new master
                applier = ChangeApplier(client)
                # Where Redis says, not where this process got to: writes a failed master had
                # acknowledged but not passed to its replica are gone with it, and the changes
                # behind them are fetched and applied again.
                stats.after = starting_seq(client)
            except redis.RedisError as error:
                redis_failures = _wait_for_redis(error, redis_failures, backoff, stop)
                continue
            log.info("Redis answers again: following after seq %d", stats.after)
            redis_failures = 0
        try:
            held = lease.hold()
            if held and standing_by:  # resume where the holder got to
                stats.after = starting_seq(client)
        except redis.RedisError as error:
            stats.redis_errors += 1
            redis_failures = _wait_for_redis(error, redis_failures, backoff, stop)
            continue
        if not held:
            if not standing_by:
                log.info("standing by: another follow holds the follow lease (%s)", lease.holder())
                standing_by = True
            stats.standby_waits += 1
            stop.wait(options.lease_seconds / 3)
            continue
        if standing_by:
            log.info("took the follow lease: following after seq %d", stats.after)
            standing_by = False
        stats.requests += 1
        try:
            page = fetch_page(base_url, stats.after, options, stop)
        except (FeedError, MalformedPage) as error:
            if stop.is_set():
                break
            stats.errors += 1
            delay = backoff.compute(min(failures, _MAX_BACKOFF_EXPONENT))
            failures += 1
            if isinstance(error, MalformedPage):
                stats.refused_pages += 1
                log.warning("feed page refused, not applied (%s); retrying in %.1f s", error, delay)
            else:
                log.warning("feed unavailable (%s); retrying in %.1f s", error, delay)
            stop.wait(delay)
            continue
        failures = 0
        rows: list[EncodedRow] = []
        notes: list[str] = []
        for change in page.changes:
            try:
                if not isinstance(change, dict):
                    raise RowError("not a JSON object")
                rows.append(encode_change(change, notes))
                if notes:
                    stats.truncated_rows += 1
                    for note in notes:
                        quarantine.add(base_url, stats.after, note)
                    notes.clear()
            except RowError as error:
                stats.bad_rows += 1
                quarantine.add(base_url, stats.after, f"{error}: {json.dumps(change, ensure_ascii=False)[:200]}")
        before = stats.applied.applied
        try:
            if not lease.hold():  # lapsed while the page came: the standby that took it applies it
                continue
            refused = applier.apply(rows, stats.applied)
            # The cursor moves only after the page is applied: a crash re-applies, harmlessly.
            client.set(keys.FOLLOW_CURSOR, page.next_after)
        except NoSnapshot:
            raise
        except redis.RedisError as error:
            # A failover or a restart: the page is fetched and applied again once Redis
            # answers. What of it was applied already is stale then: merged by seq, not
            # logged to {gk}:changes a second time.
            stats.redis_errors += 1
            redis_failures = _wait_for_redis(error, redis_failures, backoff, stop)
            continue
        for _, code in refused:
            stats.bad_rows += 1
            quarantine.add(base_url, stats.after, refused_reason(code))
        if page.changes:
            log.info(
                "applied %d of %d changes up to seq %d",
                stats.applied.applied - before,
                len(page.changes),
                page.next_after,
            )
        stats.after = page.next_after
        if not page.has_more:
            stop.wait(options.poll_seconds)


def _wait_for_redis(error: redis.RedisError, failures: int, backoff: FullJitterBackoff, stop: threading.Event) -> int:
    """Back off after a Redis failure; returns the failures counted so far."""
    delay = backoff.compute(min(failures, _MAX_BACKOFF_EXPONENT))
    log.warning("Redis unavailable (%s); retrying in %.1f s", error, delay)
    stop.wait(delay)
    return failures + 1
