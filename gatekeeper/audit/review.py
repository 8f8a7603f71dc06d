"""Retroactive review: every recorded item decided again against the registry as it stands
now, with the same pure rules; what would change is a finding.

The registry shortens, withdraws and publishes windows late (DOMAIN.md rule 10). An item
settled inside a window published later was paid in error and is to be recovered (追回,
``recover``); an item blocked under a window later withdrawn is to be paid after all (补付,
``resettle``). Items settled unverified in degraded mode are reviewed the same way: each
ends confirmed (no finding) or on the recovery list.

``gatekeeper review --since … --until …`` reviews the items of decisions made in a period;
``gatekeeper review --follow`` follows the change stream and reviews, for every change whose
window reaches into the past, every recorded item of the practitioners it touches, keeping
``review_findings`` up to date (idempotent: one row per item, replaced or deleted as the
registry changes again; its stream position is saved in the same transaction).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

import psycopg

from gatekeeper.audit.export import Period
from gatekeeper.audit.records import moment
from gatekeeper.cache import changelog
from gatekeeper.core.codes import division_of
from gatekeeper.core.cst import format_cst
from gatekeeper.core.eligibility import EligibilityStore
from gatekeeper.core.policy import Policy
from gatekeeper.core.records import OPEN_ENDED, PractitionerRecord, Status, decode_record
from gatekeeper.core.rules import Item, Verdict, decide_item
from gatekeeper.core.tables import format_table

log = logging.getLogger(__name__)

CHUNK = 500  # items decided again per store lookup
FOLLOW_CURSOR = "changes"  # review_cursor's row for {gk}:changes


@dataclass(frozen=True, slots=True)
class RecordedItem:
    """One line item as the decision record holds it: its inputs and its outcome."""

    decision_id: str
    item_index: int
    decided_at: datetime
    claim_id: str
    fixmedins_code: str
    feedetl_sn: str
    fee_ocur_time: int  # epoch seconds
    amount_fen: int
    emergency: bool
    bilg_dr_codg: str
    orders_dr_code: str
    verdict: str
    reason: str
    prac_psn_code: str

    @property
    def practitioners(self) -> tuple[str, ...]:
        """Every practitioner on the item, the ordering one first."""
        return (self.bilg_dr_codg, self.orders_dr_code) if self.orders_dr_code else (self.bilg_dr_codg,)


@dataclass(frozen=True, slots=True)
class Finding:
    """An item whose binding outcome the registry as it stands now would change."""

    decision_id: str
    claim_id: str
    fixmedins_code: str
    feedetl_sn: str
    fee_ocur_time: str
    amount_fen: int
    prac_psn_code: str  # the practitioner the new reason is about (the old one's, for resettle)
    was_verdict: str
    was_reason: str
    now_verdict: str
    now_reason: str
    action: str  # recover: was settled, now would be blocked; resettle: was blocked, now would pass
    begntime: str  # of the window now responsible ("" when none is)
    endtime: str
    chg_rea: str
    item_index: int = 0
    decided_at: str = ""

    def as_json(self) -> dict[str, Any]:
        """The documented JSON fields (item_index and decided_at are the record's own keys)."""
        document = asdict(self)
        del document["item_index"], document["decided_at"]
        return document


_ITEM_COLUMNS = (
    "decision_id, item_index, decided_at, claim_id, fixmedins_code, feedetl_sn, fee_ocur_time, amount_fen,"
    " emergency, bilg_dr_codg, coalesce(orders_dr_code, ''), verdict, reason, prac_psn_code"
)


def _recorded(row: Sequence[Any]) -> RecordedItem:
    return RecordedItem(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6].timestamp()), *row[7:])


def items_decided_in(
    connection: psycopg.Connection, period: Period, institutions: Iterable[str] = ()
) -> Iterator[RecordedItem]:
    """Every recorded item of decisions made in ``period``, oldest first."""
    wanted = list(institutions)
    query = f"SELECT {_ITEM_COLUMNS} FROM decision_items WHERE decided_at >= %s AND decided_at < %s"
    parameters: list[Any] = list(period.bounds)
    if wanted:
        query += " AND fixmedins_code = ANY(%s)"
        parameters.append(wanted)
    with connection.transaction(), connection.cursor(name="review_items") as cursor:
        cursor.itersize = 2_000
        cursor.execute(query + " ORDER BY decided_at, decision_id, item_index", parameters)
        yield from (_recorded(row) for row in cursor)


# Claims are settled after the service, but HIS clocks drift and some settle a service dated a
# little ahead: a day's margin before a window's start, when bounding decisions by it.
DECIDED_BEFORE_SERVICE_SECONDS = 86_400


def items_of_practitioner(connection: psycopg.Connection, code: str, since: int | None = None) -> list[RecordedItem]:
    """Every recorded item ``code`` took part in (ordering or executing), served at or after
    ``since`` (epoch seconds; None: ever): two index scans per daily partition, and only the
    partitions of days decided since then."""
    where, parameters = "", list[object]([code])
    if since is not None:
        where = " AND fee_ocur_time >= %s AND decided_at >= %s"
        parameters += [moment(since), moment(since - DECIDED_BEFORE_SERVICE_SECONDS)]
    rows = connection.execute(
        f"SELECT {_ITEM_COLUMNS} FROM decision_items WHERE bilg_dr_codg = %s{where}"
        f" UNION ALL SELECT {_ITEM_COLUMNS} FROM decision_items WHERE orders_dr_code = %s{where}",
        parameters + parameters,
    ).fetchall()
    return [_recorded(row) for row in rows]


def _blocked(verdict: str) -> bool:
    return verdict == "BLOCK"


def redecide(item: RecordedItem, records: dict[str, PractitionerRecord], policy: Policy) -> Finding | None:
    """The item decided again with ``records`` (the registry now): a finding when its binding
    outcome (blocked or settled) differs from the recorded one, else None. Pure."""
    region = policy.for_division(division_of(item.fixmedins_code))
    now = decide_item(
        Item(item.feedetl_sn, item.fee_ocur_time, item.amount_fen, item.practitioners, item.emergency),
        records,
        region,
    )
    now_blocked = now.verdict is Verdict.BLOCK
    if now_blocked == _blocked(item.verdict):
        return None
    window = now.window
    return Finding(
        decision_id=item.decision_id,
        claim_id=item.claim_id,
        fixmedins_code=item.fixmedins_code,
        feedetl_sn=item.feedetl_sn,
        fee_ocur_time=format_cst(item.fee_ocur_time),
        amount_fen=item.amount_fen,
        prac_psn_code=now.prac_psn_code or item.prac_psn_code,
        was_verdict=item.verdict,
        was_reason=item.reason,
        now_verdict=now.verdict.name,
        now_reason=now.reason.name,
        action="recover" if now_blocked else "resettle",
        begntime=format_cst(window.begntime) if window else "",
        endtime=format_cst(window.endtime) if window and window.endtime != OPEN_ENDED else "",
        chg_rea=window.chg_rea if window else "",
        item_index=item.item_index,
        decided_at=format_cst(int(item.decided_at.timestamp())),
    )


async def review(
    items: Iterable[RecordedItem], store: EligibilityStore, policy: Policy
) -> AsyncIterator[tuple[RecordedItem, Finding | None]]:
    """Each item with its finding (None: its outcome stands), reading the registry in chunks."""
    chunk: list[RecordedItem] = []

    async def decided(batch: list[RecordedItem]) -> list[tuple[RecordedItem, Finding | None]]:
        codes = {code for item in batch for code in item.practitioners if code}
        lookup = await store.lookup(codes)
        if lookup.unverified:
            raise RuntimeError("the eligibility cache could not be read: nothing can be reviewed now")
        return [(item, redecide(item, lookup.records, policy)) for item in batch]

    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            for result in await decided(chunk):
                yield result
            chunk = []
    if chunk:
        for result in await decided(chunk):
            yield result


# --- output -------------------------------------------------------------------------------

FINDING_FIELDS = (
    "decision_id",
    "claim_id",
    "fixmedins_code",
    "feedetl_sn",
    "fee_ocur_time",
    "amount_fen",
    "prac_psn_code",
    "was_verdict",
    "was_reason",
    "now_verdict",
    "now_reason",
    "action",
    "begntime",
    "endtime",
    "chg_rea",
)


def write_jsonl(findings: Iterable[Finding], out: TextIO) -> int:
    """One JSON object per finding."""
    count = 0
    for finding in findings:
        out.write(json.dumps(finding.as_json(), ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(findings: Iterable[Finding], out: TextIO) -> int:
    """One row per finding, a header first."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FINDING_FIELDS)
    count = 0
    for finding in findings:
        writer.writerow([finding.as_json()[name] for name in FINDING_FIELDS])
        count += 1
    return count


def write_table(findings: Iterable[Finding], out: TextIO) -> int:
    """A table of findings, then totals per institution and action (count and amount)."""
    rows, totals = [], dict[tuple[str, str], list[int]]()
    for f in findings:
        window = f"{f.begntime} → {f.endtime or 'open'}" if f.begntime else ""
        rows.append(
            (
                f.action,
                f.fixmedins_code,
                f.claim_id,
                f.feedetl_sn,
                f.fee_ocur_time,
                f"{f.amount_fen / 100:,.2f}",
                f.prac_psn_code,
                f"{f.was_verdict}/{f.was_reason}",
                f"{f.now_verdict}/{f.now_reason}",
                window,
                f.chg_rea,
            )
        )
        total = totals.setdefault((f.fixmedins_code, f.action), [0, 0])
        total[0] += 1
        total[1] += f.amount_fen
    if not rows:
        out.write("no findings: every reviewed item's outcome stands\n")
        return 0
    header = (
        *("action", "fixmedins_code", "claim_id", "feedetl_sn", "fee_ocur_time", "amount", "practitioner"),
        *("was", "now", "window", "chg_rea"),
    )
    out.write(format_table(header, rows) + "\n\n")
    summary = [(i, a, str(n), f"{fen / 100:,.2f}") for (i, a), (n, fen) in sorted(totals.items())]
    out.write(format_table(("fixmedins_code", "action", "items", "amount"), summary) + "\n")
    return len(rows)


WRITERS: dict[str, Callable[[Iterable[Finding], TextIO], int]] = {
    "table": write_table,
    "jsonl": write_jsonl,
    "csv": write_csv,
}


# --- continuous review ----------------------------------------------------------------------


# Service times are validated to lie in 1970–2099: reviewing from epoch 0 reviews every item.
EVERY_ITEM = 0


def review_since(record: PractitionerRecord, now: int) -> int | None:
    """From which service time (epoch seconds) a change calls for reviewing recorded items;
    None when it affects nothing recorded. A window starting in the past: from its start
    (whatever version it replaced began there too, or it would have another chg_id). A
    withdrawn or collapsed window starting in the future: the window it cancels may have
    started earlier, so every item."""
    starts = [
        period.begntime if period.begntime < now else EVERY_ITEM
        for period in record.periods
        if period.begntime < now or period.status == Status.WITHDRAWN or period.endtime == period.begntime
    ]
    return min(starts, default=None)


def codes_to_review(entry: changelog.Entry, now: int) -> dict[str, int]:
    """The practitioner codes a change entry calls for reviewing, each with the service time
    to review from (EVERY_ITEM: all of them)."""
    codes: dict[str, int] = {}
    for change in entry.changes:
        since = review_since(decode_record(change.record), now)
        if since is None:
            continue
        for code in change.codes:
            codes[code] = min(since, codes.get(code, since))
    return codes


def save_findings(
    connection: psycopg.Connection, reviewed: Iterable[tuple[RecordedItem, Finding | None]], registry_version: str
) -> int:
    """Upsert each finding, delete the finding of an item whose outcome now stands; call
    inside a transaction. Returns how many findings were written."""
    written = 0
    for item, finding in reviewed:
        if finding is None:
            connection.execute(
                "DELETE FROM review_findings WHERE decision_id = %s AND item_index = %s",
                [item.decision_id, item.item_index],
            )
            continue
        values = finding.as_json()
        connection.execute(
            "INSERT INTO review_findings (item_index, decided_at, registry_version, "
            + ", ".join(FINDING_FIELDS)
            + ") VALUES (%s, %s, %s, "
            + ", ".join(["%s"] * len(FINDING_FIELDS))
            + ") ON CONFLICT (decision_id, item_index) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in (*FINDING_FIELDS[7:], "registry_version"))
            + ", found_at = now()",
            [item.item_index, item.decided_at, registry_version, *(values[name] for name in FINDING_FIELDS)],
        )
        written += 1
    return written


def read_cursor(connection: psycopg.Connection) -> bytes:
    """Where continuous review has read {gk}:changes up to ("0-0": from the start)."""
    row = connection.execute("SELECT position FROM review_cursor WHERE name = %s", [FOLLOW_CURSOR]).fetchone()
    return str(row[0]).encode() if row else b"0-0"


def save_cursor(connection: psycopg.Connection, entry_id: bytes) -> None:
    """Record the stream position reviewed up to (in the findings' transaction)."""
    connection.execute(
        "INSERT INTO review_cursor (name, position) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
        [FOLLOW_CURSOR, entry_id.decode()],
    )
