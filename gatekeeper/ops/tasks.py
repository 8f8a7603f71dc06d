"""Stopping background tasks that may swallow a cancellation."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)
CANCEL_RETRY_SECONDS = 0.1


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended; an error it ended with is logged.

    redis-py (8.1) sometimes turns a cancellation that arrives mid-command into a
    ConnectionError, or loses it, so a loop that survives Redis errors can outlive a
    single ``cancel()``; ``task.cancel(); await task`` would then wait forever. The
    cancellation is repeated until it takes.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_RETRY_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s had failed", task.get_name(), exc_info=task.exception())
