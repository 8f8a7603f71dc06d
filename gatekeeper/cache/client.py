"""The service's Redis clients: every command bounded in time, no hidden retries."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(
    url: str, timeout_seconds: float | None, read_timeout_seconds: float | None = None, **options: Any
) -> redis.Redis:
    """A client whose every command, connecting included, gives up after ``timeout_seconds``
    (reading after ``read_timeout_seconds`` when given: a blocking XREAD waits longer).

    No retries: redis-py retries a failed command three times by default, which would
    multiply the time a hung Redis holds a claim. The caller decides what a failure means.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds if read_timeout_seconds is None else read_timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
