"""The audit record of a decision: one msgspec schema for the spool, the database rows and the export."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gatekeeper.core.rules import Claim, ClaimDecision


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


class Batch(msgspec.Struct, frozen=True):
    """Records written together in one transaction; the id makes a replay idempotent."""

    batch_id: str
    records: tuple[AuditRecord, ...]


encode = msgspec.json.Encoder().encode
decode_batch = msgspec.json.Decoder(Batch).decode
_decode_record = msgspec.json.Decoder(AuditRecord).decode


def encode_record(record: AuditRecord) -> bytes:
    """The JSON of a record (the export's jsonl lines)."""
    return encode(record)


def decode_record(data: bytes) -> AuditRecord:
    """A record from its JSON; msgspec.ValidationError or DecodeError if it is not one."""
    return _decode_record(data)


def audit_record(
    decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
) -> AuditRecord:
    """The audit record of one claim decision (items in claim order: ``decision.items``
    line up with ``claim.items``)."""
    items = tuple(
        AuditItem(
            feedetl_sn=d.feedetl_sn,
            fee_ocur_time=item.service_time,
            amount_fen=d.amount_fen,
            emergency=item.emergency,
            bilg_dr_codg=item.practitioners[0],
            orders_dr_code=item.practitioners[1] if len(item.practitioners) > 1 else "",
            verdict=d.verdict.name,
            reason=d.reason.name,
            prac_psn_code=d.prac_psn_code,
            enforced=d.enforced,
        )
        for item, d in zip(claim.items, decision.items, strict=True)
    )
    return AuditRecord(
        decision_id=decision_id,
        claim_id=claim.claim_id,
        fixmedins_code=claim.fixmedins_code,
        decided_at_ms=int(decided_at * 1000),
        registry_version=registry_version,
        verdict=decision.verdict.name,
        enforced=decision.enforced,
        allowed_amount_fen=decision.allowed_amount_fen,
        blocked_amount_fen=decision.blocked_amount_fen,
        items=items,
    )


DECISION_COLUMNS = (
    "decided_at",
    "decision_id",
    "claim_id",
    "fixmedins_code",
    "registry_version",
    "verdict",
    "enforced",
    "allowed_amount_fen",
    "blocked_amount_fen",
    "batch_id",
)
ITEM_COLUMNS = (
    "decided_at",
    "decision_id",
    "item_index",
    "fixmedins_code",
    "claim_id",
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
DecisionRow = tuple[datetime, str, str, str, str, str, bool, int, int, str]
ItemRow = tuple[datetime, str, int, str, str, str, datetime, int, bool, str, str | None, str, str, str, bool]


def moment(epoch_seconds: float) -> datetime:
    """An aware datetime for a timestamptz column."""
    return datetime.fromtimestamp(epoch_seconds, UTC)


def rows_of(batch: Batch) -> tuple[list[DecisionRow], list[ItemRow]]:
    """The database rows of a batch, in DECISION_COLUMNS and ITEM_COLUMNS order."""
    decisions: list[DecisionRow] = []
    items: list[ItemRow] = []
    for r in batch.records:
        decided_at = moment(r.decided_at_ms / 1000)
        decisions.append(
            (
                decided_at,
                r.decision_id,
                r.claim_id,
                r.fixmedins_code,
                r.registry_version,
                r.verdict,
                r.enforced,
                r.allowed_amount_fen,
                r.blocked_amount_fen,
                batch.batch_id,
            )
        )
        for index, i in enumerate(r.items):
            items.append(
                (
                    decided_at,
                    r.decision_id,
                    index,
                    r.fixmedins_code,
                    r.claim_id,
                    i.feedetl_sn,
                    moment(i.fee_ocur_time),
                    i.amount_fen,
                    i.emergency,
                    i.bilg_dr_codg,
                    i.orders_dr_code or None,
                    i.verdict,
                    i.reason,
                    i.prac_psn_code,
                    i.enforced,
                )
            )
    return decisions, items
