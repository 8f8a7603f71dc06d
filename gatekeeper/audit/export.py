"""Reading the decision audit for reviewers: export a period, look up a claim, count per institution and reason."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO, cast

import msgspec
import redis

from gatekeeper import defaults
from gatekeeper.audit.records import AuditRecord, decode_record
from gatekeeper.cache import keys
from gatekeeper.core.cst import format_cst
from gatekeeper.core.tables import format_table

PAGE = 1000
# Records replayed from a spool after an outage are appended late: the stream id says when
# an entry was stored, decided_at_ms when it was decided. A period's export reads entries
# stored up to this long after its end.

CSV_COLUMNS = (
    "decision_id",
    "claim_id",
    "fixmedins_code",
    "decided_at",
    "registry_version",
    "claim_verdict",
    "claim_enforced",
    "feedetl_sn",
    "verdict",
    "reason",
    "prac_psn_code",
    "amount_fen",
    "enforced",
)


def stream_entries(
    client: redis.Redis, first_ms: int | None = None, last_ms: int | None = None, page: int = PAGE
) -> Iterator[dict[bytes, bytes]]:
    """The audit stream's entries stored between two times (inclusive; None: no bound), as field maps."""
    start = "-" if first_ms is None else str(first_ms)
    end = "+" if last_ms is None else str(last_ms)  # a bare time: up to its last entry
    while True:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.AUDIT, start, end, count=page))
        for _, fields in entries:
            yield fields
        if len(entries) < page:
            return
        start = "(" + entries[-1][0].decode()


@dataclass(frozen=True)
class Period:
    """Decisions made in ``[since_ms, until_ms)``, and how late their records may have been stored."""

    since_ms: int
    until_ms: int
    late_ms: int = defaults.AUDIT_LATE_SECONDS * 1000

    def covers(self, record: AuditRecord) -> bool:
        """True when the record's decision was made within the period."""
        return self.since_ms <= record.decided_at_ms < self.until_ms


def records_in(client: redis.Redis, period: Period, institutions: Iterable[str] = ()) -> Iterator[AuditRecord]:
    """Records of decisions made in ``period`` (for ``institutions`` only, if any)."""
    wanted = {code.encode() for code in institutions}
    for fields in stream_entries(client, period.since_ms, period.until_ms + period.late_ms):
        if wanted and fields.get(b"fixmedins_code") not in wanted:
            continue
        record = decode_record(fields[b"record"])
        if period.covers(record):
            yield record


def records_of_claim(client: redis.Redis, claim_id: str, period: Period | None = None) -> Iterator[AuditRecord]:
    """Every decision on one claim (a claim re-checked has several), oldest stored first."""
    wanted = claim_id.encode()
    first = last = None
    if period is not None:
        first, last = period.since_ms, period.until_ms + period.late_ms
    for fields in stream_entries(client, first, last):
        if fields.get(b"claim_id") == wanted:
            record = decode_record(fields[b"record"])
            if period is None or period.covers(record):
                yield record


def decided_at_text(record: AuditRecord) -> str:
    """When a decision was made, China Standard Time with milliseconds."""
    seconds, milliseconds = divmod(record.decided_at_ms, 1000)
    return f"{format_cst(seconds)}.{milliseconds:03d}"


def write_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    """One JSON object per decision, with ``decided_at`` in CST beside the milliseconds."""
    count = 0
    for record in records:
        document = msgspec.to_builtins(record)
        document["decided_at"] = decided_at_text(record)
        out.write(msgspec.json.encode(document).decode() + "\n")
        count += 1
    return count


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    """One row per line item, the decision's fields repeated: what a spreadsheet wants."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in records:
        decided_at = decided_at_text(record)
        for item in record.items:
            writer.writerow(
                (
                    record.decision_id,
                    record.claim_id,
                    record.fixmedins_code,
                    decided_at,
                    record.registry_version,
                    record.verdict,
                    record.enforced,
                    item.feedetl_sn,
                    item.verdict,
                    item.reason,
                    item.prac_psn_code,
                    item.amount_fen,
                    item.enforced,
                )
            )
        count += 1
    return count


WRITERS: dict[str, Callable[[Iterable[AuditRecord], TextIO], int]] = {"jsonl": write_jsonl, "csv": write_csv}


@dataclass
class Count:
    """Line items of one institution with one reason over a period (DOMAIN.md rule 12)."""

    fixmedins_code: str
    reason: str
    items: int = 0
    amount_fen: int = 0
    blocked_items: int = 0  # of those, items whose verdict was BLOCK
    practitioners: set[str] = field(default_factory=set)  # distinct codes the reason is about

    def as_row(self) -> dict[str, object]:
        """The count as plain values, practitioners counted."""
        return {
            "fixmedins_code": self.fixmedins_code,
            "reason": self.reason,
            "items": self.items,
            "blocked_items": self.blocked_items,
            "amount_fen": self.amount_fen,
            "practitioners": len(self.practitioners),
        }


def count_by_institution_and_reason(records: Iterable[AuditRecord]) -> list[Count]:
    """Items per (institution, reason), with the distinct practitioners concerned: how many
    staff of an institution were found suspended or terminated, for rule 12's statistics.
    Sorted by institution, then reason."""
    counts: dict[tuple[str, str], Count] = defaultdict(lambda: Count("", ""))
    for record in records:
        for item in record.items:
            count = counts[record.fixmedins_code, item.reason]
            count.items += 1
            count.amount_fen += item.amount_fen
            count.blocked_items += item.verdict == "BLOCK"
            if item.prac_psn_code:
                count.practitioners.add(item.prac_psn_code)
    result = []
    for (institution, reason), count in sorted(counts.items()):
        count.fixmedins_code, count.reason = institution, reason
        result.append(count)
    return result


def format_counts(counts: list[Count]) -> str:
    """Counts as a plain-text table."""
    header = ("fixmedins_code", "reason", "items", "blocked_items", "amount", "practitioners")
    rows = [
        (
            c.fixmedins_code,
            c.reason,
            str(c.items),
            str(c.blocked_items),
            f"{c.amount_fen / 100:,.2f}",
            str(len(c.practitioners)),
        )
        for c in counts
    ]
    return format_table(header, rows)
