"""``follow`` in a thread of a test, on its own Redis client, stopped and joined within a bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from gatekeeper.cache import keys
from loader.follow import FollowOptions, FollowStats, follow
from loader.quarantine import Quarantine


def cursor(client: redis.Redis) -> int:
    """The feed seq ``follow`` has stored as applied (0: none yet)."""
    value = client.get(keys.FOLLOW_CURSOR)
    return int(value) if value else 0


class Follower:
    """``follow`` in a daemon thread until :meth:`stop`, which must end it within ``stop_within`` seconds."""

    def __init__(
        self,
        port: int,
        url: str,
        quarantine: Path,
        options: FollowOptions,
        *,
        stop_within: float,
        client: redis.Redis | None = None,
    ) -> None:
        self.stop_event = threading.Event()
        self.stats: FollowStats | None = None
        self.error: BaseException | None = None
        self._stop_within = stop_within
        self._client = redis.Redis(port=port) if client is None else client
        self._quarantine = Quarantine(quarantine)
        self._thread = threading.Thread(target=self._run, args=(url, options), daemon=True)
        self._thread.start()

    def _run(self, url: str, options: FollowOptions) -> None:
        try:
            self.stats = follow(self._client, url, self.stop_event, self._quarantine, options)
        except BaseException as error:
            self.error = error

    def wait_for_cursor(self, client: redis.Redis, seq: int, within: float = 10.0) -> None:
        """Until the stored cursor reaches ``seq`` (bounded; fails if follow died)."""
        deadline = time.monotonic() + within
        while cursor(client) < seq:
            assert self._thread.is_alive(), f"follow stopped early: {self.error!r}"
            assert time.monotonic() < deadline, f"cursor {cursor(client)} never reached {seq}"
            threading.Event().wait(0.02)

    def run_for(self, seconds: float) -> FollowStats:
        """Let it run ``seconds``, then stop it."""
        self.stop_event.wait(seconds)
        return self.stop()

    def stop(self) -> FollowStats:
        """Tell it to stop; it must end within the bound. Its error, if it died of one, is raised."""
        self.stop_event.set()
        self._thread.join(timeout=self._stop_within)
        assert not self._thread.is_alive(), f"follow did not stop within {self._stop_within} s of being told to"
        self._quarantine.close()
        self._client.close()
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats
