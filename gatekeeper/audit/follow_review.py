"""Running retroactive review: over the decisions of a period, or following the change stream."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any, cast

import psycopg

from gatekeeper import defaults
from gatekeeper.audit.export import Period
from gatekeeper.audit.review import (
    WRITERS,
    Finding,
    RecordedItem,
    codes_to_review,
    items_decided_in,
    items_of_practitioner,
    read_cursor,
    review,
    save_cursor,
    save_findings,
)
from gatekeeper.cache import changelog, keys
from gatekeeper.cache.client import REDIS_FAILURES, AsyncClient, redis_client
from gatekeeper.cache.store import RedisEligibilityStore
from gatekeeper.core.errors import GatekeeperError
from gatekeeper.core.policy import Policy

log = logging.getLogger(__name__)

BLOCK_MILLISECONDS = 1_000  # how long one read of the stream waits: the bound on stopping


class ReviewFailed(RuntimeError):
    """The registry or the record could not be read; the message says which."""


def review_period(
    connection: psycopg.Connection,
    redis_url: str,
    policy: Policy,
    period: Period,
    institutions: Iterable[str],
    output_format: str,
) -> int:
    """Print the findings on the items of decisions made in ``period``; 0, or 1 when it failed."""
    version = ""

    async def findings() -> list[Finding]:
        nonlocal version
        store = RedisEligibilityStore.from_url(redis_url, defaults.DATABASE_TIMEOUT_SECONDS)
        try:
            version = (await store.lookup(())).registry_version  # the registry is there, or fail now
            items = items_decided_in(connection, period, institutions)
            return [finding async for _, finding in review(items, store, policy) if finding is not None]
        except (GatekeeperError, RuntimeError) as error:
            raise ReviewFailed(f"cannot read the eligibility cache at {redis_url}: {error}") from error
        finally:
            await store.close()

    try:
        found = asyncio.run(findings())
    except ReviewFailed as error:
        print(f"gatekeeper review: {error}", file=sys.stderr)
        return 1
    WRITERS[output_format](found, sys.stdout)
    recover = sum(f.amount_fen for f in found if f.action == "recover")
    resettle = sum(f.amount_fen for f in found if f.action == "resettle")
    print(
        f"gatekeeper review: {len(found)} finding(s) against registry {version}: "
        f"recover {recover / 100:,.2f}, resettle {resettle / 100:,.2f}",
        file=sys.stderr,
    )
    return 0


async def _read(stream: AsyncClient, after: bytes) -> list[changelog.Entry]:
    reply = cast(
        Any,
        await stream.execute_command(
            "XREAD", "COUNT", 100, "BLOCK", BLOCK_MILLISECONDS, "STREAMS", keys.CHANGES, after
        ),
    )
    streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply or ()]
    return [changelog.parse_entry(entry_id, fields) for entries in streams for entry_id, fields in entries]


async def _review_entry(
    connection: psycopg.Connection, store: RedisEligibilityStore, policy: Policy, entry: changelog.Entry
) -> int:
    """Review what one entry calls for and save the findings with the stream position, in one
    transaction: a restart resumes after the last entry saved, and reviewing an entry again
    rewrites the same rows."""
    reviewed: list[tuple[RecordedItem, Finding | None]] = []
    if entry.switched_to is None:
        for code, since in sorted(codes_to_review(entry, int(time.time())).items()):
            async for pair in review(items_of_practitioner(connection, code, since), store, policy):
                reviewed.append(pair)
    snapshot_id, seq = store.last_version or ("", 0)
    with connection.transaction():
        written = save_findings(connection, reviewed, f"{snapshot_id}@{seq}")
        save_cursor(connection, entry.entry_id)
    return written


def follow_review(connection: psycopg.Connection, redis_url: str, policy: Policy, once: bool = False) -> int:
    """Review continuously until SIGTERM or SIGINT (``once``: until caught up); 0, or 1 when
    the registry could not be read."""

    async def run() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        timeout = defaults.DATABASE_TIMEOUT_SECONDS
        stream = redis_client(redis_url, timeout, timeout + BLOCK_MILLISECONDS / 1000)
        stream.response_callbacks["XREAD"] = lambda response, **_: response
        store = RedisEligibilityStore.from_url(redis_url, timeout)
        position = read_cursor(connection)
        log.info("review: following %s after %s", keys.CHANGES, position.decode())
        try:
            while not stopping.is_set():
                entries = await _read(stream, position)
                if not entries and once:
                    return 0
                for entry in entries:
                    written = await _review_entry(connection, store, policy, entry)
                    if written:
                        log.info("review: %d finding(s) after change entry %s", written, entry.entry_id.decode())
                    position = entry.entry_id
        except (GatekeeperError, *REDIS_FAILURES, RuntimeError) as error:
            print(f"gatekeeper review: cannot read the eligibility cache at {redis_url}: {error}", file=sys.stderr)
            return 1
        finally:
            await stream.aclose()
            await store.close()
        return 0

    return asyncio.run(run())
