"""The decision record's records, spool files and export formats, without a database."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from builders import claim, item, record, registered, suspended

from gatekeeper.audit.export import Period, write_csv, write_jsonl
from gatekeeper.audit.records import (
    AuditItem,
    AuditRecord,
    Batch,
    Entry,
    decode_batch,
    decode_record,
    encode,
    encode_record,
)
from gatekeeper.audit.spool import Spool
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import Claim, ClaimDecision, Item, ItemDecision, decide_claim

REGULAR, SUSPENDED, CANNOT_READ = "D110105000001", "D410102000002", "D330522000006"
HELD = {
    REGULAR: record(registered("2020-01-01 00:00:00", chg_id="C1")),
    SUSPENDED: record(suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C2")),
}
WHEN = "2026-11-20 10:00:00"
DECIDED_AT_MS = parse_cst("2026-11-20 10:00:05") * 1000 + 250


def decided(claim_id: str = "CLAIM-1", fixmedins_code: str = "H41130200746") -> Entry:
    """A degraded-mode decision on three items: one allowed, one blocked, one settled unverified."""
    degraded = claim(
        item(WHEN, REGULAR, sn="1", amount_fen=100),
        item(WHEN, SUSPENDED, sn="2", amount_fen=200),
        item(WHEN, CANNOT_READ, sn="3", amount_fen=400),
        claim_id=claim_id,
        fixmedins_code=fixmedins_code,
    )
    decision = decide_claim(degraded, HELD, RegionPolicy(), frozenset({CANNOT_READ}))
    return Entry(f"d-{claim_id}", degraded, decision, "snap@7", DECIDED_AT_MS)


def as_recorded(entry: Entry) -> AuditRecord:
    """The record the export reads back for an entry (the database builds it: test_audit.py
    in tests/integration checks that it does so)."""
    claim, decision = entry.claim, entry.decision
    items = tuple(
        AuditItem(
            d.feedetl_sn,
            i.service_time,
            d.amount_fen,
            i.emergency,
            i.practitioners[0],
            i.practitioners[1] if len(i.practitioners) > 1 else "",
            d.verdict.name,
            d.reason.name,
            d.prac_psn_code,
            d.enforced,
        )
        for i, d in zip(claim.items, decision.items, strict=True)
    )
    return AuditRecord(
        entry.decision_id,
        claim.claim_id,
        claim.fixmedins_code,
        entry.decided_at_ms,
        entry.registry_version,
        decision.verdict.name,
        decision.enforced,
        decision.allowed_amount_fen,
        decision.blocked_amount_fen,
        items,
    )


def test_an_entry_survives_the_spool_and_a_record_the_export() -> None:
    entry = decided()
    assert decode_batch(encode(Batch("b", (entry,)))) == Batch("b", (entry,))
    record = as_recorded(entry)
    assert decode_record(encode_record(record)) == record


def test_a_batch_spooled_as_records_by_an_earlier_version_is_read_as_entries() -> None:
    entry = decided()
    earlier = encode({"batch_id": "b", "records": [as_recorded(entry)]})
    [read] = decode_batch(earlier).entries
    assert as_recorded(read) == as_recorded(entry)  # what the database is given is the same
    assert read.claim == entry.claim


def batch(batch_id: str, *claim_ids: str) -> Batch:
    return Batch(batch_id, tuple(decided(c) for c in claim_ids))


def test_the_spool_keeps_batches_until_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(batch("b1", "c1", "c2"))
    spool.append(batch("b2", "c3"))
    assert spool.depth == 2
    assert [b.batch_id for b in spool.pending()] == ["b1", "b2"]
    assert [e.claim.claim_id for e in spool.pending()[0].entries] == ["c1", "c2"]

    spool.empty()
    assert spool.pending() == [] and spool.depth == 0
    spool.append(batch("b3", "c4"))  # appends start at the beginning again: no hole
    assert [b.batch_id for b in spool.pending()] == ["b3"]
    assert spool.path is not None and spool.path.read_bytes().startswith(b"{")


def test_a_file_locked_by_a_live_writer_is_not_an_orphan_and_a_dead_ones_is(tmp_path: Path) -> None:
    live, other = Spool(tmp_path), Spool(tmp_path)
    live.open()
    live.append(batch("b1", "c1"))
    assert list(other.orphans()) == []  # its writer holds the lock

    live._descriptor, descriptor = -1, live._descriptor
    os.close(descriptor)  # the writer dies without tidying up: the file stays, unlocked
    orphans = list(other.orphans())
    assert [(o.path, [b.batch_id for b in o.batches]) for o in orphans] == [(live.path, ["b1"])]
    assert list(Spool(tmp_path).orphans()) == []  # locked by whoever is replaying it
    orphans[0].remove()
    assert live.path is not None and not live.path.exists()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    whole = json.dumps({"batch_id": "b1", "records": []})
    (tmp_path / "audit-1-dead.spool").write_text(whole + "\n" + whole[:20])  # crashed mid-write
    [orphan] = list(Spool(tmp_path).orphans())
    assert [b.batch_id for b in orphan.batches] == ["b1"]
    orphan.remove()
    assert not orphan.path.exists() and list(tmp_path.iterdir()) == []


def test_a_file_with_lines_this_version_cannot_read_is_kept_not_deleted(tmp_path: Path) -> None:
    whole = json.dumps({"batch_id": "b1", "records": []})
    older = json.dumps({"batch_id": "b0", "records": [{"decision_id": "d0"}]})  # another version's format
    (tmp_path / "audit-1-dead.spool").write_text(older + "\n" + whole + "\n")
    [orphan] = list(Spool(tmp_path).orphans())
    assert ([b.batch_id for b in orphan.batches], orphan.unreadable) == (["b1"], 1)
    orphan.remove()  # replayed what it could read
    assert [p.name for p in tmp_path.iterdir()] == ["audit-1-dead.unreadable"]
    assert list(Spool(tmp_path).orphans()) == []  # not replayed again


def test_closing_removes_an_empty_spool_file_and_keeps_one_with_batches(tmp_path: Path) -> None:
    tidy = Spool(tmp_path)
    tidy.open()
    tidy.close()
    assert tidy.path is not None and not tidy.path.exists()

    waiting = Spool(tmp_path)
    waiting.append(batch("b1", "c1"))  # opens on first use too
    waiting.close()
    assert waiting.path is not None and waiting.path.exists()
    assert [b.batch_id for o in Spool(tmp_path).orphans() for b in o.batches] == ["b1"]


def test_a_period_selects_by_decision_time_not_storage_time() -> None:
    audited = as_recorded(decided())
    at = audited.decided_at_ms
    assert Period(at, at + 1).covers(audited)
    assert not Period(at + 1, at + 1000).covers(audited)
    assert not Period(at - 1000, at).covers(audited)  # the end is exclusive


def test_csv_has_one_row_per_item_and_jsonl_one_line_per_decision() -> None:
    records = [as_recorded(decided("c1")), as_recorded(decided("c2"))]
    table = io.StringIO()
    assert write_csv(records, table) == 2
    rows = list(csv.DictReader(io.StringIO(table.getvalue())))
    assert len(rows) == 6
    assert rows[2]["claim_id"] == "c1" and rows[2]["reason"] == "UNVERIFIED" and rows[2]["enforced"] == "False"
    assert rows[0]["decided_at"] == "2026-11-20 10:00:05.250"
    assert (rows[1]["fee_ocur_time"], rows[1]["bilg_dr_codg"], rows[1]["emergency"]) == (WHEN, SUSPENDED, "False")

    lines = io.StringIO()
    assert write_jsonl(records, lines) == 2
    first = json.loads(lines.getvalue().splitlines()[0])
    assert first["claim_id"] == "c1" and first["decided_at"] == "2026-11-20 10:00:05.250"
    assert len(first["items"]) == 3


def test_the_record_wire_format_is_the_structs_field_order() -> None:
    # The writer's SQL (audit/writer.py) and spooled batches read entries by position:
    # reordering these fields silently breaks both. Change them together, with a migration.

    assert Entry.__struct_fields__ == ("decision_id", "claim", "decision", "registry_version", "decided_at_ms")
    assert Claim.__struct_fields__ == ("claim_id", "fixmedins_code", "items")
    assert Item.__struct_fields__ == ("feedetl_sn", "service_time", "amount_fen", "practitioners", "emergency")
    assert ClaimDecision.__struct_fields__[:5] == (
        "verdict",
        "items",
        "allowed_amount_fen",
        "blocked_amount_fen",
        "enforced",
    )
    assert ItemDecision.__struct_fields__[:7] == (
        "feedetl_sn",
        "verdict",
        "reason",
        "prac_psn_code",
        "window",
        "enforced",
        "amount_fen",
    )
