"""The layout's metadata values, parsed and built here only: ``{gk}:meta``, the ``{gk}:loading``
lease and the registry version. The loader writes them and the service reads them through
this one module, so the two cannot drift apart (the Lua functions mirror it, see
loader/gatekeeper.lua)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gatekeeper.cache.keys import MetaField
from gatekeeper.core.eligibility import registry_version

# What a reader fetches from {gk}:meta with each lookup, in this order (Meta.from_read).
READ_FIELDS = (MetaField.GENERATION, MetaField.BUCKETS, MetaField.SNAPSHOT_ID, MetaField.APPLIED_SEQ)


def _text(value: bytes | str | None) -> str:
    return "" if value is None else value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Meta:
    """What ``{gk}:meta`` says is loaded; ``generation`` is None before the first snapshot."""

    generation: int | None
    buckets: int = 0
    snapshot_id: str = ""
    applied_seq: int = 0  # the snapshot's watermark or the highest change applied since
    watermark_seq: int = 0
    change_seq: int = 0  # the highest seq ever applied from the change feed
    record_count: int = 0
    switched_at: float = 0.0

    @classmethod
    def from_hash(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Meta:
        """From the whole hash (HGETALL)."""
        meta = {_text(k): _text(v) for k, v in fields.items()}
        generation = meta.get(MetaField.GENERATION)
        return cls(
            generation=int(generation) if generation else None,
            buckets=int(meta.get(MetaField.BUCKETS) or 0),
            snapshot_id=meta.get(MetaField.SNAPSHOT_ID, ""),
            applied_seq=int(meta.get(MetaField.APPLIED_SEQ) or 0),
            watermark_seq=int(meta.get(MetaField.WATERMARK_SEQ) or 0),
            change_seq=int(meta.get(MetaField.CHANGE_SEQ) or 0),
            record_count=int(meta.get(MetaField.RECORD_COUNT) or 0),
            switched_at=float(meta.get(MetaField.SWITCHED_AT) or 0),
        )

    @classmethod
    def from_read(cls, values: Sequence[bytes | None]) -> Meta:
        """From the values of :data:`READ_FIELDS` (HMGET), as a reader fetches them."""
        generation, buckets, snapshot_id, applied_seq = values
        if generation is None or buckets is None:
            return cls(None)
        return cls(int(generation), int(buckets), _text(snapshot_id), int(applied_seq or 0))

    @property
    def loaded(self) -> bool:
        """True once a snapshot has been switched to."""
        return self.generation is not None

    @property
    def registry_version(self) -> str:
        """``<snapshot_id>@<applied_seq>``."""
        return registry_version(self.snapshot_id, self.applied_seq)


BULK = "bulk"  # the phase of a lease while a snapshot's rows are bulk-written


@dataclass(frozen=True, slots=True)
class Lease:
    """The value of ``{gk}:loading``: the generation a snapshot load fills, its bucket count,
    the snapshot's watermark, and the token that proves the holder is the loader that took it."""

    generation: int
    buckets: int
    watermark_seq: int
    token: str
    # BULK while the loader writes the snapshot's first rows with plain HSETs: changes are
    # then logged, not written into the generation (the loader replays them before it switches).
    phase: str = ""

    def format(self) -> str:
        """``"<generation> <buckets> <watermark_seq> <token>[ bulk]"``, as stored."""
        value = f"{self.generation} {self.buckets} {self.watermark_seq} {self.token}"
        return f"{value} {self.phase}" if self.phase else value

    @classmethod
    def parse(cls, value: bytes | str | None) -> Lease | None:
        """The lease stored in ``{gk}:loading``, or None when no load holds it."""
        if not value:
            return None
        generation, buckets, watermark_seq, token, *phase = _text(value).split()
        return cls(int(generation), int(buckets), int(watermark_seq), token, "".join(phase))

    @property
    def takes_changes(self) -> bool:
        """True when changes are written into the loading generation as they are applied."""
        return self.phase != BULK

    @property
    def description(self) -> str:
        """What the lease says without its secret token, for status output and errors."""
        return f"generation {self.generation}, {self.buckets} buckets, watermark {self.watermark_seq}"
