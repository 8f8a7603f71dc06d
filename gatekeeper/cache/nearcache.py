"""The near cache: decoded records in process, bounded in count and age.

The change follower (follower.py) keeps it coherent with ``{gk}:changes``; no entry is used
after ``max_age_seconds``, whatever happens to notifications. Entries it stops trusting
are held for degraded mode (``held_many``), where their own age bounds their use.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection

from gatekeeper.core.records import PractitionerRecord


class NearCache:
    """A bounded map of code -> (record or None for unknown, time fetched).

    Eviction is first-in first-out (dicts keep insertion order): cheaper than LRU on the
    hot path, and practitioners who bill often are fetched again at once after eviction.
    """

    def __init__(self, max_entries: int, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._entries: dict[str, tuple[PractitionerRecord | None, float]] = {}
        # Entries no longer trusted for ordinary lookups (notifications broke off), kept for
        # degraded mode until the cache catches up again.
        self._held: dict[str, tuple[PractitionerRecord | None, float]] = {}
        self.epoch = 0  # bumped by every invalidation: a fetch that began before it is not kept

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(
        self, codes: Collection[str], found: dict[str, PractitionerRecord], oldest: float | None = None
    ) -> list[str]:
        """Put cached records of ``codes`` fetched at or after ``oldest`` (default: within the
        maximum age) into ``found``; return the codes to fetch."""
        if oldest is None:
            oldest = self._clock() - self.max_age_seconds
        missing = []
        entries = self._entries
        for code in codes:
            entry = entries.get(code)
            if entry is None or entry[1] < oldest:
                missing.append(code)
            elif entry[0] is not None:
                found[code] = entry[0]
        return missing

    def put_many(self, codes: Collection[str], records: dict[str, PractitionerRecord], epoch: int) -> None:
        """Remember fetched records (and that the other codes are unknown), unless an
        invalidation happened since ``epoch``."""
        if epoch != self.epoch:
            return
        now = self._clock()
        entries = self._entries
        for code in codes:
            entries.pop(code, None)  # re-inserted at the end: the newest for FIFO eviction
            entries[code] = (records.get(code), now)
        overflow = len(entries) - self.max_entries
        if overflow > 0:
            for code in list(itertools.islice(entries, overflow)):
                del entries[code]

    def invalidate(self, codes: Collection[str]) -> None:
        """Forget these codes, held entries too: a record known to be stale never answers."""
        self.epoch += 1
        for code in codes:
            self._entries.pop(code, None)
            self._held.pop(code, None)

    def clear(self) -> None:
        """Forget everything, held entries too."""
        self.epoch += 1
        self._entries.clear()
        self._held = {}

    def retire(self) -> None:
        """Stop answering ordinary lookups from the entries (their notifications may have
        been missed), but hold them for degraded mode, where their age bounds their use."""
        self.epoch += 1
        if not self._held:
            self._held = self._entries
        else:
            for code, entry in self._entries.items():  # the newer entries win
                self._held.pop(code, None)
                self._held[code] = entry
            self._trim_held()
        self._entries = {}

    def hold_many(self, codes: Collection[str], records: dict[str, PractitionerRecord]) -> None:
        """Hold records read while the cache is not trusted (and that the other codes are
        unknown): for degraded mode only."""
        now = self._clock()
        held = self._held
        for code in codes:
            held.pop(code, None)
            held[code] = (records.get(code), now)
        self._trim_held()

    def _trim_held(self) -> None:
        """Hold no more than ``max_entries``, the oldest dropped first."""
        overflow = len(self._held) - self.max_entries
        if overflow > 0:
            for code in list(itertools.islice(self._held, overflow)):
                del self._held[code]

    def held_many(self, codes: Collection[str], found: dict[str, PractitionerRecord], max_age: float) -> list[str]:
        """Degraded mode: put records of ``codes`` fetched within ``max_age`` into ``found``,
        from live or held entries; return the codes the process holds nothing recent for."""
        oldest = self._clock() - max_age
        unverified = []
        for code in codes:
            entry = self._entries.get(code) or self._held.get(code)
            if entry is None or entry[1] < oldest:
                unverified.append(code)
            elif entry[0] is not None:
                found[code] = entry[0]
        return unverified
