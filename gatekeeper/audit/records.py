"""The audit record of a decision: one msgspec schema for the stream, the spool and the export."""

from __future__ import annotations

import msgspec

from gatekeeper.core.rules import Claim, ClaimDecision


class AuditItem(msgspec.Struct, frozen=True):
    """One line item's decision as audited."""

    feedetl_sn: str
    verdict: str  # ALLOW, ALLOW_EXEMPT, BLOCK
    reason: str  # OK, SUSPENDED, ..., UNVERIFIED
    prac_psn_code: str
    amount_fen: int
    enforced: bool


class AuditRecord(msgspec.Struct, frozen=True):
    """One decision as audited: the stream entry's ``record`` field, and a spool line's element."""

    decision_id: str
    claim_id: str
    fixmedins_code: str
    decided_at_ms: int  # when it was decided (epoch milliseconds); the stream id says when it was stored
    registry_version: str
    verdict: str  # the claim's: ALLOW, PARTIAL, BLOCK
    enforced: bool
    allowed_amount_fen: int
    blocked_amount_fen: int
    items: tuple[AuditItem, ...]


class Batch(msgspec.Struct, frozen=True):
    """Records appended together; the id makes a replay idempotent."""

    batch_id: str
    records: tuple[AuditRecord, ...]


encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(AuditRecord).decode
decode_batch = msgspec.json.Decoder(Batch).decode


def encode_record(record: AuditRecord) -> bytes:
    """The JSON of a record, as stored in the stream."""
    return encode(record)


def decode_record(data: bytes) -> AuditRecord:
    """A record from the stream's JSON; msgspec.ValidationError or DecodeError if it is not one."""
    return _decode_record(data)


def audit_record(
    decision_id: str, claim: Claim, decision: ClaimDecision, registry_version: str, decided_at: float
) -> AuditRecord:
    """The audit record of one claim decision."""
    items = tuple(
        AuditItem(
            feedetl_sn=d.feedetl_sn,
            verdict=d.verdict.name,
            reason=d.reason.name,
            prac_psn_code=d.prac_psn_code,
            amount_fen=d.amount_fen,
            enforced=d.enforced,
        )
        for d in decision.items
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
