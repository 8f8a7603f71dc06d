"""The decision core: which line items of a claim may be settled, and why.

Pure functions of (claim, records, policy): no I/O, no clock. The rules are those of
``DOMAIN.md``; each function names the rule it implements.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import msgspec

from gatekeeper.core.policy import RegionPolicy, Unverified
from gatekeeper.core.records import OPEN_ENDED, PractitionerRecord, Status, StatusPeriod


class Verdict(enum.IntEnum):
    """An item's verdict; numbers match ``gatekeeper.v1.Verdict``."""

    ALLOW = 1
    ALLOW_EXEMPT = 2
    BLOCK = 3


class ClaimVerdict(enum.IntEnum):
    """A claim's verdict; numbers match ``gatekeeper.v1.ClaimVerdict``."""

    ALLOW = 1
    PARTIAL = 2
    BLOCK = 3


class Reason(enum.IntEnum):
    """Why an item got its verdict; numbers match ``gatekeeper.v1.Reason``."""

    OK = 1
    EMERGENCY_EXEMPT = 2
    SUSPENDED = 3
    TERMINATED = 4
    UNREGISTERED = 5
    MALFORMED_CODE = 6
    MISSING_PRACTITIONER = 7
    UNVERIFIED = 8  # degraded mode: the practitioner's record could not be read


class Role(enum.IntEnum):
    """Which field of a line item named the practitioner a decision is about (rule 9)."""

    ORDERING = 1  # bilg_dr_codg, 开单医生 (also when the same code is in both fields)
    EXECUTING = 2  # orders_dr_code, 受单医生


# Rule 9: when several practitioners on an item are barred, the most severe wins. A
# status that could not be checked ranks below every known block: a practitioner known
# to be barred decides the item whatever the others' unknown status.
SEVERITY = {
    Reason.TERMINATED: 5,
    Reason.SUSPENDED: 4,
    Reason.UNREGISTERED: 3,
    Reason.MALFORMED_CODE: 2,
    Reason.MISSING_PRACTITIONER: 1,
    Reason.UNVERIFIED: 0,
}
NOTHING_UNVERIFIED: frozenset[str] = frozenset()


# Claims, items and their decisions are built for every line item on the hot path and
# recorded as they are: msgspec structs, several times cheaper to build than dataclasses,
# and encoded for the decision record in one call (as arrays, in field order: the record's
# wire format, gatekeeper/audit/records.py). Immutable; never part of a reference cycle.
# The field order is that wire format: the writer's SQL reads fields by position, and
# spooled batches are decoded by position (tests/unit/test_audit.py pins it). Append only.
class Item(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A validated line item: codes trimmed, service time in epoch seconds."""

    feedetl_sn: str
    service_time: int
    amount_fen: int
    # The ordering practitioner first (empty when missing), then the executing one if named.
    practitioners: tuple[str, ...]
    emergency: bool  # the item's own flag or the claim's


class Claim(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A validated claim."""

    claim_id: str
    fixmedins_code: str
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Standing:
    """One practitioner's standing at one moment: a reason and the window behind it."""

    reason: Reason
    window: StatusPeriod | None = None


class ItemDecision(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The decision on one line item."""

    feedetl_sn: str
    verdict: Verdict
    reason: Reason
    prac_psn_code: str  # the practitioner the reason is about; empty for REASON_OK
    window: StatusPeriod | None  # the window that caused a block or exemption
    enforced: bool
    amount_fen: int
    role: Role = Role.ORDERING  # the field that named prac_psn_code


class ClaimDecision(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The decision on a whole claim; ``items`` in request order."""

    verdict: ClaimVerdict
    items: tuple[ItemDecision, ...]
    allowed_amount_fen: int
    blocked_amount_fen: int
    enforced: bool
    stood_in: int = 0  # unverified items settled in degraded mode (the stand-in count)


REGISTERED = Standing(Reason.OK)
UNREGISTERED = Standing(Reason.UNREGISTERED)
MALFORMED = Standing(Reason.MALFORMED_CODE)
MISSING = Standing(Reason.MISSING_PRACTITIONER)
UNVERIFIED = Standing(Reason.UNVERIFIED)


def standing_at(record: PractitionerRecord | None, moment: int) -> Standing:
    """A well-formed code's standing at ``moment`` (rules 2, 3, 6, 7, 8, 10).

    Terminated beats suspended beats registered; a code with no registration covering
    the moment, or unknown to the registry, is unregistered. Withdrawn periods
    (vali_flag = 0) never count.
    """
    if record is None:
        return UNREGISTERED
    suspension = registration = None
    for period in record.periods:
        if not period.covers(moment):
            continue
        if period.status == Status.TERMINATED:
            return Standing(Reason.TERMINATED, period)
        if period.status == Status.SUSPENDED:
            suspension = period
        elif period.status == Status.REGISTERED:
            registration = period
    if suspension is not None:
        return Standing(Reason.SUSPENDED, suspension)
    if registration is not None:
        return REGISTERED
    return UNREGISTERED


def assess(
    code: str,
    moment: int,
    records: Mapping[str, PractitionerRecord],
    policy: RegionPolicy,
    unverified: Collection[str] = NOTHING_UNVERIFIED,
) -> Standing:
    """The standing of a code as sent on an item: missing, malformed, unverified (its
    record could not be read), or per the registry."""
    if not code:
        return MISSING
    if not policy.is_practitioner_code(code):
        return MALFORMED
    record = records.get(code)
    if record is None and code in unverified:
        return UNVERIFIED
    return standing_at(record, moment)


def _exempt(standing: Standing, policy: RegionPolicy) -> bool:
    """Rule 4: emergency and rescue care is settled during a suspension, and during a
    termination only where the region's policy says so."""
    if standing.reason is Reason.SUSPENDED:
        return True
    return standing.reason is Reason.TERMINATED and policy.emergency_exempts_termination


def _role(item: Item, code: str) -> Role:
    """The ordering practitioner is first on an item; a second code is the executing one."""
    return Role.ORDERING if code == item.practitioners[0] else Role.EXECUTING


def decide_item(
    item: Item,
    records: Mapping[str, PractitionerRecord],
    policy: RegionPolicy,
    unverified: Collection[str] = NOTHING_UNVERIFIED,
    may_stand_in: bool = True,
) -> ItemDecision:
    """Decide one line item (rules 3, 4, 8, 9, 11, and degraded mode).

    Every practitioner on the item counts. An emergency item is exempt only when every
    practitioner who would block it is exempt; otherwise the most severe remaining
    block decides. ``unverified`` holds codes whose records could not be read: when no
    known block decides the item, the region policy does (settle it unverified, unless
    it blocks unverified items or ``may_stand_in`` is False: the stand-in limit is used up).
    """
    block: tuple[Standing, str] | None = None
    exemption: tuple[Standing, str] | None = None
    for code in item.practitioners:
        standing = assess(code, item.service_time, records, policy, unverified)
        if standing.reason is Reason.OK:
            continue
        if item.emergency and _exempt(standing, policy):
            if exemption is None or SEVERITY[standing.reason] > SEVERITY[exemption[0].reason]:
                exemption = (standing, code)
        elif block is None or SEVERITY[standing.reason] > SEVERITY[block[0].reason]:
            block = (standing, code)

    enforced = policy.enforced
    sn, amount = item.feedetl_sn, item.amount_fen
    if block is not None:
        standing, code = block
        if standing.reason is Reason.UNVERIFIED and policy.unverified is Unverified.ALLOW and may_stand_in:
            # Settled without a check: not enforced, and recorded for review.
            return ItemDecision(
                feedetl_sn=sn,
                verdict=Verdict.ALLOW,
                reason=Reason.UNVERIFIED,
                prac_psn_code=code,
                window=None,
                enforced=False,
                amount_fen=amount,
                role=_role(item, code),
            )
        # Rule 11: in monitor mode the block is computed and recorded, not applied.
        return ItemDecision(
            feedetl_sn=sn,
            verdict=Verdict.BLOCK if enforced else Verdict.ALLOW,
            reason=standing.reason,
            prac_psn_code=code,
            window=standing.window,
            enforced=enforced,
            amount_fen=amount,
            role=_role(item, code),
        )
    if exemption is not None:
        standing, code = exemption
        return ItemDecision(
            feedetl_sn=sn,
            verdict=Verdict.ALLOW_EXEMPT,
            reason=Reason.EMERGENCY_EXEMPT,
            prac_psn_code=code,
            window=standing.window,
            enforced=enforced,
            amount_fen=amount,
            role=_role(item, code),
        )
    return ItemDecision(
        feedetl_sn=sn,
        verdict=Verdict.ALLOW,
        reason=Reason.OK,
        prac_psn_code="",
        window=None,
        enforced=enforced,
        amount_fen=amount,
    )


# Most practitioners have only ever been registered: their standing is REGISTERED exactly
# while a registration covers the moment, whatever the rest of the rules say. A claim's items
# billed by such practitioners alone are decided from their registrations (one comparison per
# practitioner), every other item by decide_item; both give the same decision.
def _registered_only(
    claim: Claim, records: Mapping[str, PractitionerRecord], policy: RegionPolicy
) -> dict[str, tuple[tuple[int, int], ...]]:
    """The registration windows of the claim's practitioners whose valid periods are all
    registrations; practitioners with a suspension, a termination or no record are left out."""
    found = {}
    for code in {c for item in claim.items for c in item.practitioners}:
        record = records.get(code)
        if record is None or not policy.is_practitioner_code(code):
            continue
        windows = []
        for period in record.periods:
            if period.status == Status.REGISTERED:
                windows.append((period.begntime, period.endtime))
            elif period.status != Status.WITHDRAWN:
                break
        else:
            found[code] = tuple(windows)
    return found


def _all_registered(item: Item, registered: Mapping[str, tuple[tuple[int, int], ...]]) -> bool:
    """True when every practitioner on the item is registered at its service time and has
    never been anything else (``_registered_only``)."""
    moment = item.service_time
    for code in item.practitioners:
        windows = registered.get(code)
        if windows is None:
            return False
        for begins, ends in windows:
            if begins <= moment and (ends == OPEN_ENDED or moment < ends):
                break
        else:
            return False
    return True


def decide_claim(
    claim: Claim,
    records: Mapping[str, PractitionerRecord],
    policy: RegionPolicy,
    unverified: Collection[str] = NOTHING_UNVERIFIED,
    stand_in: int | None = None,
) -> ClaimDecision:
    """Decide every item of a claim against the registry records of its practitioners.

    ``records`` maps well-formed codes to their records; a code absent from it is unknown
    to the registry, unless it is in ``unverified``: its record could not be read
    (degraded mode). ``stand_in`` is how many unverified items may still be settled for
    the institution (None: no limit); later ones are blocked.
    """
    if unverified:
        items = _decide_standing_in(claim, records, policy, unverified, stand_in)
    else:
        registered = _registered_only(claim, records, policy)
        enforced = policy.enforced
        items = tuple(
            [
                ItemDecision(item.feedetl_sn, Verdict.ALLOW, Reason.OK, "", None, enforced, item.amount_fen)
                if _all_registered(item, registered)
                else decide_item(item, records, policy)
                for item in claim.items
            ]
        )
    allowed = blocked = 0
    passed = stood_in = 0
    for decision in items:
        if decision.reason is Reason.UNVERIFIED and decision.verdict is not Verdict.BLOCK:
            stood_in += 1
        if decision.verdict is Verdict.BLOCK:
            blocked += decision.amount_fen
        else:
            allowed += decision.amount_fen
            passed += 1
    if passed == len(items):
        verdict = ClaimVerdict.ALLOW
    elif passed == 0:
        verdict = ClaimVerdict.BLOCK
    else:
        verdict = ClaimVerdict.PARTIAL
    return ClaimDecision(verdict, items, allowed, blocked, policy.enforced, stood_in)


def unenforced(decision: ClaimDecision) -> ClaimDecision:
    """The decision settled without enforcement, as monitor mode settles (rule 11): every
    item allowed and marked ``enforced = false``, its reason kept. For a region whose policy
    settles claims whose decision cannot be recorded (``unrecorded = "settle"``)."""
    items = tuple(
        ItemDecision(
            feedetl_sn=d.feedetl_sn,
            verdict=Verdict.ALLOW if d.verdict is Verdict.BLOCK else d.verdict,
            reason=d.reason,
            prac_psn_code=d.prac_psn_code,
            window=d.window,
            enforced=False,
            amount_fen=d.amount_fen,
            role=d.role,
        )
        for d in decision.items
    )
    total = decision.allowed_amount_fen + decision.blocked_amount_fen
    return ClaimDecision(ClaimVerdict.ALLOW, items, total, 0, False, decision.stood_in)


def _decide_standing_in(
    claim: Claim,
    records: Mapping[str, PractitionerRecord],
    policy: RegionPolicy,
    unverified: Collection[str],
    stand_in: int | None,
) -> tuple[ItemDecision, ...]:
    """Decide items in order, settling unverified ones while the stand-in allowance lasts."""
    left = stand_in
    decisions = []
    for item in claim.items:
        decision = decide_item(item, records, policy, unverified, left is None or left > 0)
        if left is not None and decision.reason is Reason.UNVERIFIED and decision.verdict is not Verdict.BLOCK:
            left -= 1
        decisions.append(decision)
    return tuple(decisions)


@dataclass(frozen=True, slots=True)
class PractitionerView:
    """A practitioner's standing at a moment and what is scheduled after it (事前提醒)."""

    standing: Standing
    may_bill: bool
    may_bill_emergency: bool
    current: StatusPeriod | None  # the window that decides the standing
    upcoming: tuple[StatusPeriod, ...]  # valid windows starting after the moment


def describe_practitioner(
    code: str,
    record: PractitionerRecord | None,
    moment: int,
    policy: RegionPolicy,
) -> PractitionerView:
    """What an HIS should know before ordering under ``code`` at ``moment``."""
    standing = assess(code, moment, {code: record} if record is not None else {}, policy)
    current = standing.window
    if standing.reason is Reason.OK and record is not None:
        current = next(
            (p for p in record.periods if p.status == Status.REGISTERED and p.covers(moment)),
            None,
        )
    upcoming: tuple[StatusPeriod, ...] = ()
    if record is not None:
        upcoming = tuple(
            sorted(
                # An empty window [b, b) is one the registry cancelled: nothing is coming.
                (
                    p
                    for p in record.periods
                    if p.status != Status.WITHDRAWN and p.begntime > moment and p.endtime != p.begntime
                ),
                key=lambda p: (p.begntime, p.status),
            )
        )
    may_bill = standing.reason is Reason.OK
    may_bill_emergency = may_bill or _exempt(standing, policy)
    return PractitionerView(standing, may_bill, may_bill_emergency, current, upcoming)
