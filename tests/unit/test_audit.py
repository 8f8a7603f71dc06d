"""The decision record's records, spool files and export formats, without a database."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from builders import claim, item, record, registered, suspended

from gatekeeper.audit.export import Period, write_csv, write_jsonl
from gatekeeper.audit.records import AuditRecord, Batch, audit_record, decode_record, encode_record
from gatekeeper.audit.spool import Spool
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import decide_claim

REGULAR, SUSPENDED, CANNOT_READ = "D110105000001", "D410102000002", "D330522000006"
HELD = {
    REGULAR: record(registered("2020-01-01 00:00:00", chg_id="C1")),
    SUSPENDED: record(suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C2")),
}
WHEN = "2026-11-20 10:00:00"
DECIDED_AT = parse_cst("2026-11-20 10:00:05") + 0.25


def decided(claim_id: str = "CLAIM-1", fixmedins_code: str = "H41130200746") -> AuditRecord:
    degraded = claim(
        item(WHEN, REGULAR, sn="1", amount_fen=100),
        item(WHEN, SUSPENDED, sn="2", amount_fen=200),
        item(WHEN, CANNOT_READ, sn="3", amount_fen=400),
        claim_id=claim_id,
        fixmedins_code=fixmedins_code,
    )
    decision = decide_claim(degraded, HELD, RegionPolicy(), frozenset({CANNOT_READ}))
    return audit_record(f"d-{claim_id}", degraded, decision, "snap@7", DECIDED_AT)


def test_a_record_carries_the_decision_and_every_item() -> None:
    audited = decided()
    assert (audited.decision_id, audited.claim_id, audited.fixmedins_code) == ("d-CLAIM-1", "CLAIM-1", "H41130200746")
    assert audited.decided_at_ms == parse_cst("2026-11-20 10:00:05") * 1000 + 250
    assert (audited.registry_version, audited.verdict, audited.enforced) == ("snap@7", "PARTIAL", True)
    assert (audited.allowed_amount_fen, audited.blocked_amount_fen) == (500, 200)
    assert [(i.feedetl_sn, i.verdict, i.reason, i.prac_psn_code, i.amount_fen, i.enforced) for i in audited.items] == [
        ("1", "ALLOW", "OK", "", 100, True),
        ("2", "BLOCK", "SUSPENDED", SUSPENDED, 200, True),
        ("3", "ALLOW", "UNVERIFIED", CANNOT_READ, 400, False),
    ]
    # Each item's inputs too, so that review can decide it again: service time, practitioners, emergency.
    assert [(i.fee_ocur_time, i.practitioners, i.emergency) for i in audited.items] == [
        (parse_cst(WHEN), (REGULAR,), False),
        (parse_cst(WHEN), (SUSPENDED,), False),
        (parse_cst(WHEN), (CANNOT_READ,), False),
    ]
    assert decode_record(encode_record(audited)) == audited


def batch(batch_id: str, *claim_ids: str) -> Batch:
    return Batch(batch_id, tuple(decided(c) for c in claim_ids))


def test_the_spool_keeps_batches_until_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(batch("b1", "c1", "c2"))
    spool.append(batch("b2", "c3"))
    assert spool.depth == 2
    assert [b.batch_id for b in spool.pending()] == ["b1", "b2"]
    assert [r.claim_id for r in spool.pending()[0].records] == ["c1", "c2"]

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
    audited = decided()
    at = audited.decided_at_ms
    assert Period(at, at + 1).covers(audited)
    assert not Period(at + 1, at + 1000).covers(audited)
    assert not Period(at - 1000, at).covers(audited)  # the end is exclusive


def test_csv_has_one_row_per_item_and_jsonl_one_line_per_decision() -> None:
    records = [decided("c1"), decided("c2")]
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
