"""What the servicer asks of an eligibility store: the interface, its answer and its counters.

Stores (gatekeeper/cache/) implement :class:`EligibilityStore`; the servicer and the server
use nothing else of them, so unit tests can hand in an in-memory one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from gatekeeper.core.records import PractitionerRecord

MAX_VERSION_LENGTH = 128


def registry_version(snapshot_id: str, applied_seq: int) -> str:
    """The version string of a response: the snapshot and the last change applied."""
    return f"{snapshot_id}@{applied_seq}"


def version_seq(version: str) -> int:
    """The comparable part of a registry version: the registry seq it includes.

    Seqs only grow, across snapshots too, so a version is newer than another exactly
    when its seq is higher. ValueError for text that is not a version.
    """
    _, separator, seq = version.rpartition("@")
    if len(version) > MAX_VERSION_LENGTH or not separator or not seq.isascii() or not seq.isdigit():
        raise ValueError(f"{version[:60]!r} is not a registry version (<snapshot_id>@<seq>)")
    return int(seq)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Records of the codes asked for that the registry knows, and the data's version.

    In degraded mode (the cache unreadable) ``unverified`` holds the codes whose records
    could not be read: they are absent from ``records`` without being unknown.
    """

    records: dict[str, PractitionerRecord]
    snapshot_id: str
    applied_seq: int
    generation: int = 0
    unverified: frozenset[str] = frozenset()

    @property
    def registry_version(self) -> str:
        """``<snapshot_id>@<applied_seq>``."""
        return registry_version(self.snapshot_id, self.applied_seq)


@dataclass
class StoreStats:
    """A store's counters since it started: one object for its life, read by metrics at
    scrape time (never replaced, so a reader holding it always sees the live counts)."""

    hits: int = 0  # codes answered from the near cache
    misses: int = 0  # codes read from Redis
    invalidations: int = 0  # codes dropped by change notifications
    clears: int = 0  # times the whole near cache stopped being trusted
    degraded_lookups: int = 0  # lookups answered without Redis
    unverified: int = 0  # codes those lookups could not answer for
    redis_errors: dict[str, int] = field(default_factory=dict)  # failed Redis operations by kind

    def redis_error(self, operation: str) -> None:
        """Count one failed Redis ``operation`` (lookup, changes, health)."""
        self.redis_errors[operation] = self.redis_errors.get(operation, 0) + 1

    def since(self, earlier: StoreStats) -> StoreStats:
        """The counts added since ``earlier`` (a copy taken then)."""
        errors = {k: v - earlier.redis_errors.get(k, 0) for k, v in self.redis_errors.items()}
        return StoreStats(
            self.hits - earlier.hits,
            self.misses - earlier.misses,
            self.invalidations - earlier.invalidations,
            self.clears - earlier.clears,
            self.degraded_lookups - earlier.degraded_lookups,
            self.unverified - earlier.unverified,
            errors,
        )

    def copy(self) -> StoreStats:
        """A snapshot of the counts now."""
        return self.since(StoreStats())


class EligibilityStore(Protocol):
    """Reads practitioner records from one consistent registry snapshot."""

    stats: StoreStats

    def start(self) -> None:
        """Start background work, if any (needs a running event loop)."""
        ...

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        """Records for ``codes`` (unknown codes are absent), from data that includes registry
        seq ``min_seq``. Raises RegistryNotLoaded, RegistryBehind, CacheUnavailable; a store
        in degraded mode answers with the codes it cannot read in ``Lookup.unverified``."""
        ...

    async def registry_updated_at(self) -> float | None:
        """When the registry data was last updated, in epoch seconds: the snapshot switch or
        the latest change applied since, whichever is later; None without a snapshot.
        Raises CacheUnavailable."""
        ...

    def notification_lags_ms(self) -> list[float]:
        """Milliseconds from changes being logged to this store dropping them, since the last
        call (empty for a store without a near cache)."""
        ...

    async def close(self) -> None:
        """Release connections and background tasks."""
        ...
