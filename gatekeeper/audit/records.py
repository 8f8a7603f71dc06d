"""The decision record's shapes: the entry the writer takes (spool and database), the record the export reads."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gatekeeper.core.rules import Claim, ClaimDecision, ClaimVerdict, Item, ItemDecision, Reason, Verdict


class AuditItem(msgspec.Struct, frozen=True):
    """One line item as decided: its inputs (service time, practitioners, emergency flag,
    amount), so that retroactive review can decide it again, and its outcome."""

    feedetl_sn: str
    fee_ocur_time: int  # the service time, epoch seconds
    amount_fen: int
    emergency: bool  # the item's own flag or the claim's
    bilg_dr_codg: str  # the ordering practitioner ('' when missing)
    orders_dr_code: str  # the executing practitioner when another one, else ''
    verdict: str  # ALLOW, ALLOW_EXEMPT, BLOCK
    reason: str  # OK, SUSPENDED, ..., UNVERIFIED
    prac_psn_code: str  # the practitioner the reason is about
    enforced: bool

    @property
    def practitioners(self) -> tuple[str, ...]:
        """Every practitioner on the item, the ordering one first (as rules.Item has them)."""
        return (self.bilg_dr_codg, self.orders_dr_code) if self.orders_dr_code else (self.bilg_dr_codg,)


class AuditRecord(msgspec.Struct, frozen=True):
    """One decision as recorded."""

    decision_id: str
    claim_id: str
    fixmedins_code: str
    decided_at_ms: int  # when it was decided (epoch milliseconds)
    registry_version: str
    verdict: str  # the claim's: ALLOW, PARTIAL, BLOCK
    enforced: bool
    allowed_amount_fen: int
    blocked_amount_fen: int
    items: tuple[AuditItem, ...]


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One decision as the writer takes it and the database reads it: the claim and its
    decision as decided (``gatekeeper.core.rules``), encoded as JSON arrays in field order.
    The writer builds nothing else per decision; the database expands an entry into its
    ``decisions`` row and ``decision_items`` rows (writer.py)."""

    decision_id: str
    claim: Claim
    decision: ClaimDecision
    registry_version: str
    decided_at_ms: int  # when it was decided (epoch milliseconds)


class Batch(msgspec.Struct, frozen=True):
    """Decisions written together in one transaction; the id makes a replay idempotent."""

    batch_id: str
    entries: tuple[Entry, ...]


class _RecordsBatch(msgspec.Struct, frozen=True):
    """A batch as spooled before entries (records): still replayed."""

    batch_id: str
    records: tuple[AuditRecord, ...]


encode = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(Batch).decode
_decode_records_batch = msgspec.json.Decoder(_RecordsBatch).decode
_decode_record = msgspec.json.Decoder(AuditRecord).decode


def encode_record(record: AuditRecord) -> bytes:
    """The JSON of a record (the export's jsonl lines)."""
    return encode(record)


def decode_record(data: bytes) -> AuditRecord:
    """A record from its JSON; msgspec.ValidationError or DecodeError if it is not one."""
    return _decode_record(data)


def decode_batch(data: bytes) -> Batch:
    """A spooled batch; msgspec.ValidationError or DecodeError if it is not one. A batch
    spooled as records (an earlier version's format) is read as entries."""
    try:
        return _decode_batch(data)
    except msgspec.ValidationError:
        try:
            old = _decode_records_batch(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise msgspec.ValidationError("neither a batch of entries nor one of records") from None
        return Batch(old.batch_id, tuple(entry_of(record) for record in old.records))


def entry_of(record: AuditRecord) -> Entry:
    """The entry a record was made from (what the database reads: no status windows)."""
    items, decided = [], []
    for i in record.items:
        items.append(Item(i.feedetl_sn, i.fee_ocur_time, i.amount_fen, i.practitioners, i.emergency))
        verdict, reason = Verdict[i.verdict], Reason[i.reason]
        decided.append(ItemDecision(i.feedetl_sn, verdict, reason, i.prac_psn_code, None, i.enforced, i.amount_fen))
    claim = Claim(record.claim_id, record.fixmedins_code, tuple(items))
    decision = ClaimDecision(
        ClaimVerdict[record.verdict],
        tuple(decided),
        record.allowed_amount_fen,
        record.blocked_amount_fen,
        record.enforced,
    )
    return Entry(record.decision_id, claim, decision, record.registry_version, record.decided_at_ms)


def moment(epoch_seconds: float) -> datetime:
    """An aware datetime for a timestamptz column."""
    return datetime.fromtimestamp(epoch_seconds, UTC)
