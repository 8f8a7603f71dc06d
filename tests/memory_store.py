"""An in-memory eligibility store, for tests that need a store they can make misbehave."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from gatekeeper.core.eligibility import Lookup, StoreStats
from gatekeeper.core.errors import RegistryBehind, RegistryNotLoaded
from gatekeeper.core.records import PractitionerRecord


class MemoryEligibilityStore:
    """Records in a dict; ``snapshot_id`` None plays a cache with no snapshot loaded."""

    def __init__(
        self, records: Mapping[str, PractitionerRecord], snapshot_id: str = "memory", applied_seq: int = 0
    ) -> None:
        self.records = dict(records)
        self.snapshot_id: str | None = snapshot_id
        self.applied_seq = applied_seq
        self.updated_at = time.time()
        self.stats = StoreStats()

    def start(self) -> None:
        pass

    def notification_lags_ms(self) -> list[float]:
        return []

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        if self.snapshot_id is None:
            raise RegistryNotLoaded()
        if self.applied_seq < min_seq:
            raise RegistryBehind(min_seq, self.applied_seq)
        found = {c: self.records[c] for c in codes if c in self.records}
        return Lookup(found, self.snapshot_id, self.applied_seq)

    async def registry_updated_at(self) -> float | None:
        return self.updated_at if self.snapshot_id is not None else None

    async def close(self) -> None:
        pass
