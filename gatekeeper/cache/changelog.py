"""The ``{gk}:changes`` stream: its entry layout, shared by the loader (writer) and readers.

Each entry is either one batch of applied changes, fields ``seq code chg_id record``
repeated once per change, followed by ``moved_from`` when the change took its period from
another code (a stream entry may repeat field names), or a snapshot switch, the single
field ``switch`` with the new generation. Entries are read raw: redis-py's XRANGE/XREAD
helpers fold fields into a dict and would keep only the last change of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoggedChange:
    """One change as logged: its seq, the practitioner code, the one-period record, its
    chg_id, and the code the period moved from ("" if none): that code changed too."""

    seq: int
    code: str
    record: bytes
    chg_id: str = ""  # empty in entries written before the chg_id index
    moved_from: str = ""

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code whose record this change altered."""
        return (self.code, self.moved_from) if self.moved_from else (self.code,)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: changes applied, or a switch to a new generation."""

    entry_id: bytes
    changes: tuple[LoggedChange, ...] = ()
    switched_to: int | None = None


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def missed_entries(last_seen: bytes | str, max_deleted_entry_id: bytes | str) -> bool:
    """True when entries after ``last_seen`` were trimmed before the reader read them.

    ``max_deleted_entry_id`` is what XINFO STREAM reports (Redis 7): the newest entry id the
    stream has ever dropped. A reader whose last id is older has a gap it cannot fill and
    must drop everything it caches.
    """
    return stream_id(last_seen) < stream_id(max_deleted_entry_id)


def parse_entry(entry_id: bytes, fields: Sequence[bytes]) -> Entry:
    """Decode one raw entry (its id and flat field/value list)."""
    if len(fields) == 2 and fields[0] == b"switch":
        return Entry(entry_id, switched_to=int(fields[1]))
    changes: list[LoggedChange] = []
    current: dict[bytes, bytes] = {}
    for name, value in zip(fields[::2], fields[1::2], strict=False):
        if name == b"seq" and current:
            changes.append(_change(current))
            current = {}
        current[name] = value
    if current:
        changes.append(_change(current))
    return Entry(entry_id, changes=tuple(changes))


def _change(fields: dict[bytes, bytes]) -> LoggedChange:
    return LoggedChange(
        int(fields[b"seq"]),
        fields[b"code"].decode(),
        fields[b"record"],
        fields.get(b"chg_id", b"").decode(),
        fields.get(b"moved_from", b"").decode(),
    )
