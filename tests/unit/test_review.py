"""Retroactive review decides a recorded item again with the same rules: what to recover, what to pay after all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from builders import claim, item, record, registered, suspended, terminated

from gatekeeper.audit.review import EVERY_ITEM, RecordedItem, codes_to_review, redecide, review_since
from gatekeeper.cache.changelog import Entry, LoggedChange
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.policy import Mode, Policy, RegionPolicy
from gatekeeper.core.records import PractitionerRecord, encode_record
from gatekeeper.core.rules import decide_claim, unenforced

DOCTOR, NURSE = "D410102000002", "N410102000003"
SERVED = "2026-11-20 10:00:00"
REGISTERED = record(registered("2020-01-01 00:00:00", chg_id="R"))
SUSPENDED_SINCE_OCTOBER = record(
    registered("2020-01-01 00:00:00", chg_id="R"), suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="S")
)


def recorded(verdict: str, reason: str, *, emergency: bool = False, executing: str = "") -> RecordedItem:
    return RecordedItem(
        decision_id="d1",
        item_index=0,
        decided_at=datetime(2026, 11, 20, 2, 0, tzinfo=UTC),
        claim_id="c1",
        fixmedins_code="H41130200746",
        feedetl_sn="1",
        fee_ocur_time=parse_cst(SERVED),
        amount_fen=12_345,
        emergency=emergency,
        bilg_dr_codg=DOCTOR,
        orders_dr_code=executing,
        verdict=verdict,
        reason=reason,
        prac_psn_code=DOCTOR if reason != "OK" else "",
    )


def test_an_item_paid_inside_a_suspension_published_later_is_to_be_recovered() -> None:
    finding = redecide(recorded("ALLOW", "OK"), {DOCTOR: SUSPENDED_SINCE_OCTOBER}, Policy())
    assert finding is not None
    assert (finding.action, finding.was_verdict, finding.now_verdict, finding.now_reason) == (
        "recover",
        "ALLOW",
        "BLOCK",
        "SUSPENDED",
    )
    assert (finding.begntime, finding.endtime, finding.chg_rea) == (
        "2026-10-01 00:00:00",
        "2027-01-01 00:00:00",
        "暂停",
    )
    assert (finding.prac_psn_code, finding.amount_fen, finding.fee_ocur_time) == (DOCTOR, 12_345, SERVED)


def test_an_item_blocked_under_a_window_withdrawn_since_is_to_be_paid_after_all() -> None:
    finding = redecide(recorded("BLOCK", "SUSPENDED"), {DOCTOR: REGISTERED}, Policy())
    assert finding is not None
    assert (finding.action, finding.now_verdict, finding.now_reason, finding.prac_psn_code) == (
        "resettle",
        "ALLOW",
        "OK",
        DOCTOR,
    )
    assert finding.begntime == ""  # no window is responsible now


@pytest.mark.parametrize(
    ("was", "registry", "emergency"),
    [
        pytest.param(("ALLOW", "OK"), REGISTERED, False, id="unchanged"),
        pytest.param(("BLOCK", "SUSPENDED"), SUSPENDED_SINCE_OCTOBER, False, id="still_suspended"),
        pytest.param(("ALLOW_EXEMPT", "EMERGENCY_EXEMPT"), SUSPENDED_SINCE_OCTOBER, True, id="emergency_stays_exempt"),
        pytest.param(("ALLOW", "OK"), SUSPENDED_SINCE_OCTOBER, True, id="emergency_published_late_is_exempt"),
    ],
)
def test_an_item_whose_outcome_stands_is_no_finding(
    was: tuple[str, str], registry: PractitionerRecord, emergency: bool
) -> None:
    assert redecide(recorded(*was, emergency=emergency), {DOCTOR: registry}, Policy()) is None


def test_an_item_settled_unverified_in_degraded_mode_ends_confirmed_or_on_the_recovery_list() -> None:
    assert redecide(recorded("ALLOW", "UNVERIFIED"), {DOCTOR: REGISTERED}, Policy()) is None
    finding = redecide(recorded("ALLOW", "UNVERIFIED"), {DOCTOR: SUSPENDED_SINCE_OCTOBER}, Policy())
    assert finding is not None and finding.action == "recover"


def test_every_practitioner_on_the_item_counts() -> None:
    item = recorded("ALLOW", "OK", executing=NURSE)
    finding = redecide(item, {DOCTOR: REGISTERED, NURSE: SUSPENDED_SINCE_OCTOBER}, Policy())
    assert finding is not None and finding.prac_psn_code == NURSE


def test_monitor_mode_recovers_nothing() -> None:
    monitor = Policy(default=RegionPolicy(mode=Mode.MONITOR))
    assert redecide(recorded("ALLOW", "OK"), {DOCTOR: SUSPENDED_SINCE_OCTOBER}, monitor) is None


def change(code: str, practitioner: PractitionerRecord, seq: int = 1) -> LoggedChange:
    return LoggedChange(seq, code, encode_record(practitioner))


def test_a_change_calls_for_review_when_its_window_reaches_into_the_past() -> None:
    now = parse_cst("2026-11-25 00:00:00")
    late = record(suspended("2026-11-01 00:00:00", "2027-01-01 00:00:00", chg_id="S"))
    future = record(suspended("2026-12-01 00:00:00", "2027-01-01 00:00:00", chg_id="S"))
    collapsed = record(suspended("2026-12-01 00:00:00", "2026-12-01 00:00:00", chg_id="S"))
    assert review_since(late, now) == parse_cst("2026-11-01 00:00:00")
    assert review_since(future, now) is None  # affects nothing recorded
    assert review_since(collapsed, now) == EVERY_ITEM  # the window it cancels may have begun long ago
    entry = Entry(b"1-0", changes=(change(DOCTOR, late), change(NURSE, future)))
    assert codes_to_review(entry, now) == {DOCTOR: parse_cst("2026-11-01 00:00:00")}  # from the window's start
    assert codes_to_review(Entry(b"1-1", changes=(change(NURSE, collapsed),)), now) == {NURSE: EVERY_ITEM}
    assert codes_to_review(Entry(b"2-0", switched_to=7), now) == {}


def test_unenforced_settles_every_item_and_keeps_the_reasons() -> None:
    decision = decide_claim(
        claim(item(SERVED, DOCTOR, amount_fen=100), item(SERVED, NURSE, sn="2", amount_fen=50)),
        {DOCTOR: SUSPENDED_SINCE_OCTOBER, NURSE: record(terminated("2026-01-01 00:00:00", chg_id="T"))},
        RegionPolicy(),
    )
    settled = unenforced(decision)
    assert (settled.allowed_amount_fen, settled.blocked_amount_fen, settled.enforced) == (150, 0, False)
    assert [(d.verdict.name, d.reason.name, d.enforced) for d in settled.items] == [
        ("ALLOW", "SUSPENDED", False),
        ("ALLOW", "TERMINATED", False),
    ]
