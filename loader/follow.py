"""Follow the registry's HTTP change feed, resuming from the seq stored in Redis."""

from __future__ import annotations

import json
import logging
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import redis

from gatekeeper.cache import keys
from loader.cache import ApplyStats, ChangeApplier, read_state
from loader.feed import FeedPage, MalformedPage, changes_url, parse_page
from loader.quarantine import Quarantine
from loader.rows import EncodedRow, RowError, encode_change

log = logging.getLogger(__name__)


class FeedError(RuntimeError):
    """The feed answered something other than a page of changes."""


@dataclass(frozen=True)
class FollowOptions:
    """How ``follow`` polls and backs off."""

    limit: int = 1_000  # changes per request
    poll_seconds: float = 1.0  # wait when the feed has nothing more
    timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


@dataclass
class FollowStats:
    """What a follow run did."""

    requests: int = 0
    errors: int = 0
    bad_rows: int = 0
    applied: ApplyStats = field(default_factory=ApplyStats)
    after: int = 0


def fetch_page(base_url: str, after: int, limit: int, timeout: float) -> FeedPage:
    """One page of changes after ``after``."""
    url = changes_url(base_url, after, limit)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse_page(response.read())
    except (urllib.error.URLError, OSError, MalformedPage) as error:
        raise FeedError(f"{url}: {error}") from error


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
    """Pull and apply changes until ``stop`` is set; back off on errors, resume on restart."""
    applier = ChangeApplier(client)
    stats = FollowStats(after=starting_seq(client))
    backoff = options.backoff_initial_seconds
    log.info("following %s after seq %d", base_url, stats.after)
    while not stop.is_set():
        stats.requests += 1
        try:
            page = fetch_page(base_url, stats.after, options.limit, options.timeout_seconds)
        except FeedError as error:
            stats.errors += 1
            # Full jitter keeps many loaders from retrying in step.
            delay = random.uniform(0, backoff)
            log.warning("feed unavailable (%s); retrying in %.1f s", error, delay)
            stop.wait(delay)
            backoff = min(backoff * 2, options.backoff_max_seconds)
            continue
        backoff = options.backoff_initial_seconds
        rows: list[EncodedRow] = []
        for change in page.changes:
            try:
                if not isinstance(change, dict):
                    raise RowError("not a JSON object")
                rows.append(encode_change(change))
            except RowError as error:
                stats.bad_rows += 1
                quarantine.add(base_url, stats.after, f"{error}: {json.dumps(change, ensure_ascii=False)[:200]}")
        before = stats.applied.applied
        applier.apply(rows, stats.applied)
        # The cursor moves only after the page is applied: a crash re-applies, harmlessly.
        client.set(keys.FOLLOW_CURSOR, page.next_after)
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
    return stats
