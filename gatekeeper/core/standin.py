"""The stand-in limit: how many unverified items per institution degraded mode may still settle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SECONDS_PER_MINUTE = 60.0
DEFAULT_MAX_INSTITUTIONS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float
    per_minute: int

    def refilled(self, now: float, per_minute: int | None = None) -> float:
        """Tokens at ``now``, refilling at ``per_minute`` (default: the bucket's own rate)."""
        rate = self.per_minute if per_minute is None else per_minute
        return min(float(rate), self.tokens + (now - self.updated_at) * rate / SECONDS_PER_MINUTE)


class StandInLimiter:
    """One token bucket per institution, as card networks cap stand-in processing.

    A bucket holds up to ``per_minute`` items and refills at ``per_minute`` a minute, so
    an institution may settle a burst of that many unverified items, then that many a
    minute. Time comes from the injected clock only; nothing here sleeps or does I/O.
    Institutions whose bucket is full again carry no information and are forgotten when
    the map grows past ``max_institutions``.
    """

    def __init__(self, clock: Callable[[], float], max_institutions: int = DEFAULT_MAX_INSTITUTIONS) -> None:
        self._clock = clock
        self._max_institutions = max_institutions
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, institution: str, per_minute: int, now: float) -> float:
        bucket = self._buckets.get(institution)
        return float(per_minute) if bucket is None else bucket.refilled(now, per_minute)

    def available(self, institution: str, per_minute: int) -> int | None:
        """How many unverified items ``institution`` may settle now; None when unlimited (0)."""
        if per_minute <= 0:
            return None
        return max(0, int(self._tokens(institution, per_minute, self._clock())))

    def take(self, institution: str, per_minute: int, count: int) -> None:
        """Record that ``count`` unverified items of ``institution`` were settled."""
        if per_minute <= 0 or count <= 0:
            return
        now = self._clock()
        tokens = self._tokens(institution, per_minute, now) - count
        self._buckets.pop(institution, None)  # re-inserted last: the most recently used
        self._buckets[institution] = _Bucket(tokens, now, per_minute)
        if len(self._buckets) > self._max_institutions:
            self._forget(now)

    def _forget(self, now: float) -> None:
        for institution in [i for i, b in self._buckets.items() if b.refilled(now) >= b.per_minute]:
            del self._buckets[institution]
        while len(self._buckets) > self._max_institutions:  # all still draining: the least recent go
            del self._buckets[next(iter(self._buckets))]
