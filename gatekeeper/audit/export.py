"""Reading the decision record for reviewers: export a period, look up a claim, count per
institution and reason (DOMAIN.md rule 12) — each one query of PostgreSQL."""

from __future__ import annotations

import csv
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import msgspec
import psycopg

from gatekeeper.audit.records import AuditItem, AuditRecord, moment
from gatekeeper.core.cst import format_cst
from gatekeeper.core.tables import format_table

CSV_COLUMNS = (
    "decision_id",
    "claim_id",
    "fixmedins_code",
    "decided_at",
    "registry_version",
    "claim_verdict",
    "claim_enforced",
    "feedetl_sn",
    "fee_ocur_time",
    "amount_fen",
    "emergency",
    "bilg_dr_codg",
    "orders_dr_code",
    "verdict",
    "reason",
    "prac_psn_code",
    "enforced",
)
FETCH = 2_000  # rows a server-side cursor sends at a time


@dataclass(frozen=True)
class Period:
    """Decisions made in ``[since_ms, until_ms)``, epoch milliseconds."""

    since_ms: int
    until_ms: int

    def covers(self, record: AuditRecord) -> bool:
        """True when the record's decision was made within the period."""
        return self.since_ms <= record.decided_at_ms < self.until_ms

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        """The period as timestamptz values."""
        return moment(self.since_ms / 1000), moment(self.until_ms / 1000)


_DECISIONS = (
    "SELECT decided_at, decision_id, claim_id, fixmedins_code, registry_version, verdict, enforced,"
    " allowed_amount_fen, blocked_amount_fen FROM decisions"
)
_ITEMS = (
    "SELECT decided_at, decision_id, feedetl_sn, fee_ocur_time, amount_fen, emergency, bilg_dr_codg,"
    " coalesce(orders_dr_code, ''), verdict, reason, prac_psn_code, enforced FROM decision_items"
)


def _milliseconds(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def _item(row: Sequence[Any]) -> AuditItem:
    return AuditItem(
        feedetl_sn=row[2],
        fee_ocur_time=int(row[3].timestamp()),
        amount_fen=row[4],
        emergency=row[5],
        bilg_dr_codg=row[6],
        orders_dr_code=row[7],
        verdict=row[8],
        reason=row[9],
        prac_psn_code=row[10],
        enforced=row[11],
    )


def _record(row: Sequence[Any], items: tuple[AuditItem, ...]) -> AuditRecord:
    return AuditRecord(
        decision_id=row[1],
        claim_id=row[2],
        fixmedins_code=row[3],
        decided_at_ms=_milliseconds(row[0]),
        registry_version=row[4],
        verdict=row[5],
        enforced=row[6],
        allowed_amount_fen=row[7],
        blocked_amount_fen=row[8],
        items=items,
    )


def _joined(decisions: Iterator[Sequence[Any]], items: Iterator[Sequence[Any]]) -> Iterator[AuditRecord]:
    """Decisions with their items, both streams ordered by (decided_at, decision_id[, item_index])."""
    pending = next(items, None)
    for row in decisions:
        key = (row[0], row[1])
        mine = []
        while pending is not None and (pending[0], pending[1]) < key:
            pending = next(items, None)  # items of a decision filtered out (another institution)
        while pending is not None and (pending[0], pending[1]) == key:
            mine.append(_item(pending))
            pending = next(items, None)
        yield _record(row, tuple(mine))


def records_in(
    connection: psycopg.Connection, period: Period, institutions: Iterable[str] = ()
) -> Generator[AuditRecord, None, None]:
    """Records of decisions made in ``period`` (for ``institutions`` only, if any), oldest first.
    Its cursors live in a transaction until the generator ends: close it before the connection
    (a reader that stops early, as on a closed pipe, would otherwise leave the transaction open)."""
    since, until = period.bounds
    wanted = list(institutions)
    where = " WHERE decided_at >= %s AND decided_at < %s" + (" AND fixmedins_code = ANY(%s)" if wanted else "")
    parameters: list[Any] = [since, until] + ([wanted] if wanted else [])
    with (
        connection.transaction(),  # server-side cursors live in a transaction
        connection.cursor(name="export_decisions") as decisions,
        connection.cursor(name="export_items") as items,
    ):
        decisions.itersize = items.itersize = FETCH
        decisions.execute(_DECISIONS + where + " ORDER BY decided_at, decision_id", parameters)
        items.execute(_ITEMS + where + " ORDER BY decided_at, decision_id, item_index", parameters)
        yield from _joined(iter(decisions), iter(items))


def records_of_claim(
    connection: psycopg.Connection, claim_id: str, period: Period | None = None
) -> Iterator[AuditRecord]:
    """Every decision on one claim (a claim re-checked has several), oldest first."""
    where = " WHERE claim_id = %s"
    parameters: list[Any] = [claim_id]
    if period is not None:
        where += " AND decided_at >= %s AND decided_at < %s"
        parameters += period.bounds
    decisions = connection.execute(_DECISIONS + where + " ORDER BY decided_at, decision_id", parameters).fetchall()
    ids = [row[1] for row in decisions]
    items = connection.execute(
        _ITEMS + " WHERE decision_id = ANY(%s) ORDER BY decided_at, decision_id, item_index", [ids]
    ).fetchall()
    yield from _joined(iter(decisions), iter(items))


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
        for item in document["items"]:
            item["fee_ocur_time"] = format_cst(item["fee_ocur_time"])
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
                    format_cst(item.fee_ocur_time),
                    item.amount_fen,
                    item.emergency,
                    item.bilg_dr_codg,
                    item.orders_dr_code,
                    item.verdict,
                    item.reason,
                    item.prac_psn_code,
                    item.enforced,
                )
            )
        count += 1
    return count


WRITERS: dict[str, Callable[[Iterable[AuditRecord], TextIO], int]] = {"jsonl": write_jsonl, "csv": write_csv}


@dataclass(frozen=True)
class Count:
    """Line items of one institution with one reason over a period (DOMAIN.md rule 12)."""

    fixmedins_code: str
    reason: str
    items: int
    blocked_items: int  # of those, items whose verdict was BLOCK
    amount_fen: int
    practitioners: int  # distinct codes the reason is about

    def as_row(self) -> dict[str, object]:
        """The count as plain values."""
        return dict(vars(self))


def count_by_institution_and_reason(
    connection: psycopg.Connection, period: Period, institutions: Iterable[str] = ()
) -> list[Count]:
    """Items per (institution, reason) over a period, with the distinct practitioners
    concerned: how many staff of an institution were found suspended or terminated, for
    rule 12's statistics. One query; sorted by institution, then reason."""
    since, until = period.bounds
    wanted = list(institutions)
    rows = connection.execute(
        "SELECT fixmedins_code, reason, count(*), count(*) FILTER (WHERE verdict = 'BLOCK'),"
        " coalesce(sum(amount_fen), 0), count(DISTINCT nullif(prac_psn_code, ''))"
        " FROM decision_items WHERE decided_at >= %s AND decided_at < %s"
        + (" AND fixmedins_code = ANY(%s)" if wanted else "")
        + " GROUP BY fixmedins_code, reason ORDER BY fixmedins_code, reason",
        [since, until] + ([wanted] if wanted else []),
    ).fetchall()
    return [Count(row[0], row[1], row[2], row[3], int(row[4]), row[5]) for row in rows]


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
            str(c.practitioners),
        )
        for c in counts
    ]
    return format_table(header, rows)
