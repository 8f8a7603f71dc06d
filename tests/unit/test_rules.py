"""The decision core against the rules of DOMAIN.md: one named case per rule and boundary."""

from __future__ import annotations

import pytest
from builders import at, claim, item, record, registered, suspended, terminated, withdrawn

from gatekeeper.core.policy import Mode, RegionPolicy
from gatekeeper.core.records import PractitionerRecord, StatusPeriod, merge_period
from gatekeeper.core.rules import (
    ClaimVerdict,
    Reason,
    Verdict,
    decide_claim,
    decide_item,
    describe_practitioner,
    standing_at,
)

ENFORCE = RegionPolicy()
MONITOR = RegionPolicy(mode=Mode.MONITOR)
# Beijing applies the emergency exemption to terminations too (rule 4).
BEIJING = RegionPolicy(emergency_exempts_termination=True)
DOCTORS_ONLY = RegionPolicy(practitioner_prefixes=("D",))

# --- The registry the cases are judged against -------------------------------------------

REGULAR = "D110105000001"  # registered since 2020, never sanctioned
SUSPENDED = "D410102000002"  # suspended [2026-10-01, 2027-01-01)
TERMINATED = "D410102000003"  # terminated from 2026-06-01, open-ended
REREGISTERED = "D510105000005"  # terminated [2024-03-01, 2025-03-01), registered again from 2025-03-01
NOT_YET_REGISTERED = "D330522000006"  # registration starts 2027-01-01
REGISTRATION_ENDED = "D330522000007"  # registration [2015-01-01, 2025-01-01)
WITHDRAWN = "D120101000008"  # a suspension and a termination, both withdrawn on appeal
OVERLAPPING = "D440101000009"  # suspension [2026-09-01, 2026-12-01) overlapped by a termination from 2026-11-01
SUSPENDED_NURSE = "N330522000004"  # suspended [2026-10-01, 2027-01-01)
PHARMACIST = "Y110105000010"  # registered
TECHNICIAN = "J110105000013"  # registered
SUSPENDED_HJ = "HJ110105000002"  # institution technical staff, suspended [2026-10-01, 2027-01-01)
REGULAR_HY = "HY110105000011"  # institution pharmacy staff, registered
UNKNOWN = "D110105999999"  # well-formed, not in the registry

SUSPENSION = suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0003", seq=20, chg_rea="年度累计记分9分")
TERMINATION = terminated("2026-06-01 00:00:00", chg_id="C0005", seq=21, ban_endtime="2029-06-01 00:00:00")
OLD_TERMINATION = terminated(
    "2024-03-01 00:00:00", "2025-03-01 00:00:00", chg_id="C0008", seq=22, ban_endtime="2025-03-01 00:00:00"
)
OVERLAP_SUSPENSION = suspended("2026-09-01 00:00:00", "2026-12-01 00:00:00", chg_id="C0012", seq=31)
OVERLAP_TERMINATION = terminated("2026-11-01 00:00:00", chg_id="C0013", seq=32)
NURSE_SUSPENSION = suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0006S", seq=33)
HJ_SUSPENSION = suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0014S", seq=34)

REGISTRY: dict[str, PractitionerRecord] = {
    REGULAR: record(registered("2020-01-01 00:00:00", chg_id="C0001")),
    SUSPENDED: record(registered("2019-05-01 00:00:00", chg_id="C0002", seq=2), SUSPENSION),
    TERMINATED: record(registered("2018-03-01 00:00:00", "2026-06-01 00:00:00", chg_id="C0004", seq=3), TERMINATION),
    REREGISTERED: record(
        registered("2017-09-01 00:00:00", "2024-03-01 00:00:00", chg_id="C0007", seq=5),
        OLD_TERMINATION,
        registered("2025-03-01 00:00:00", chg_id="C0009", seq=30),
    ),
    NOT_YET_REGISTERED: record(registered("2027-01-01 00:00:00", chg_id="C0010", seq=6)),
    REGISTRATION_ENDED: record(registered("2015-01-01 00:00:00", "2025-01-01 00:00:00", chg_id="C0011", seq=7)),
    WITHDRAWN: record(
        registered("2020-01-01 00:00:00", chg_id="C0015", seq=8),
        withdrawn("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0016", seq=40),
        withdrawn("2026-11-01 00:00:00", chg_id="C0017", seq=41),
    ),
    OVERLAPPING: record(
        registered("2020-01-01 00:00:00", chg_id="C0018", seq=9), OVERLAP_SUSPENSION, OVERLAP_TERMINATION
    ),
    SUSPENDED_NURSE: record(
        registered("2021-07-01 00:00:00", chg_id="C0006", seq=4), NURSE_SUSPENSION, prac_psn_type=2
    ),
    PHARMACIST: record(registered("2020-01-01 00:00:00", chg_id="C0019", seq=10), prac_psn_type=3),
    TECHNICIAN: record(registered("2020-01-01 00:00:00", chg_id="C0020", seq=11), prac_psn_type=4),
    SUSPENDED_HJ: record(registered("2020-01-01 00:00:00", chg_id="C0014", seq=12), HJ_SUSPENSION, prac_psn_type=4),
    REGULAR_HY: record(registered("2020-01-01 00:00:00", chg_id="C0021", seq=13), prac_psn_type=3),
}

BEFORE_SUSPENSION = "2026-09-15 10:00:00"
DURING_SUSPENSION = "2026-10-15 10:00:00"  # REGULAR registered; SUSPENDED suspended; TERMINATED terminated


def case(
    name: str,
    when: str,
    practitioners: tuple[str, ...],
    verdict: Verdict,
    reason: Reason,
    code: str = "",
    window: StatusPeriod | None = None,
    *,
    emergency: bool = False,
    policy: RegionPolicy = ENFORCE,
) -> object:
    """One row of the item table: what an item at ``when`` by ``practitioners`` must get."""
    return pytest.param(when, practitioners, emergency, policy, verdict, reason, code, window, id=name)


ITEM_CASES = [
    # Rule 3: a service during a suspension or termination is not settled.
    case("rule3_registered_practitioner_settles", DURING_SUSPENSION, (REGULAR,), Verdict.ALLOW, Reason.OK),
    case(
        "rule3_service_during_suspension_blocked",
        DURING_SUSPENSION,
        (SUSPENDED,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case(
        "rule3_service_during_termination_blocked",
        DURING_SUSPENSION,
        (TERMINATED,),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
    ),
    case("rule3_service_before_suspension_settles", BEFORE_SUSPENSION, (SUSPENDED,), Verdict.ALLOW, Reason.OK),
    # Rule 7: windows are half-open [begntime, endtime).
    case(
        "rule7_window_start_is_inclusive",
        "2026-10-01 00:00:00",
        (SUSPENDED,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case("rule7_second_before_window_start_settles", "2026-09-30 23:59:59", (SUSPENDED,), Verdict.ALLOW, Reason.OK),
    case(
        "rule7_last_second_of_window_blocked",
        "2026-12-31 23:59:59",
        (SUSPENDED,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case("rule7_window_end_is_exclusive", "2027-01-01 00:00:00", (SUSPENDED,), Verdict.ALLOW, Reason.OK),
    case(
        "rule7_open_ended_termination_lasts",
        "2099-12-31 23:59:59",
        (TERMINATED,),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
    ),
    # Rule 1: nurses, pharmacists, technicians and institution staff are in scope too.
    case(
        "rule1_nurse_suspension_blocks",
        DURING_SUSPENSION,
        (SUSPENDED_NURSE,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED_NURSE,
        NURSE_SUSPENSION,
    ),
    case(
        "rule1_institution_technical_staff_suspension_blocks",
        DURING_SUSPENSION,
        (SUSPENDED_HJ,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED_HJ,
        HJ_SUSPENSION,
    ),
    case("rule1_pharmacist_settles", DURING_SUSPENSION, (PHARMACIST,), Verdict.ALLOW, Reason.OK),
    case("rule1_technician_settles", DURING_SUSPENSION, (TECHNICIAN,), Verdict.ALLOW, Reason.OK),
    case("rule1_institution_pharmacy_staff_settles", DURING_SUSPENSION, (REGULAR_HY,), Verdict.ALLOW, Reason.OK),
    # Rule 2: statuses as the registry publishes them; a re-registration after a termination settles again.
    case(
        "rule2_termination_blocks_until_its_end",
        "2025-02-28 23:59:59",
        (REREGISTERED,),
        Verdict.BLOCK,
        Reason.TERMINATED,
        REREGISTERED,
        OLD_TERMINATION,
    ),
    case("rule2_reregistration_after_termination", "2025-03-01 00:00:00", (REREGISTERED,), Verdict.ALLOW, Reason.OK),
    case("rule2_registered_before_termination", "2024-02-29 23:59:59", (REREGISTERED,), Verdict.ALLOW, Reason.OK),
    case(
        "rule2_termination_beats_overlapping_suspension",
        "2026-11-15 10:00:00",
        (OVERLAPPING,),
        Verdict.BLOCK,
        Reason.TERMINATED,
        OVERLAPPING,
        OVERLAP_TERMINATION,
    ),
    case(
        "rule2_suspension_before_overlapping_termination",
        "2026-10-31 23:59:59",
        (OVERLAPPING,),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        OVERLAPPING,
        OVERLAP_SUSPENSION,
    ),
    # Rule 4: emergency and rescue care.
    case(
        "rule4_emergency_exempts_suspension",
        DURING_SUSPENSION,
        (SUSPENDED,),
        Verdict.ALLOW_EXEMPT,
        Reason.EMERGENCY_EXEMPT,
        SUSPENDED,
        SUSPENSION,
        emergency=True,
    ),
    case(
        "rule4_emergency_does_not_exempt_termination_by_default",
        DURING_SUSPENSION,
        (TERMINATED,),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
        emergency=True,
    ),
    case(
        "rule4_region_policy_exempts_termination",
        DURING_SUSPENSION,
        (TERMINATED,),
        Verdict.ALLOW_EXEMPT,
        Reason.EMERGENCY_EXEMPT,
        TERMINATED,
        TERMINATION,
        emergency=True,
        policy=BEIJING,
    ),
    case(
        "rule4_exemption_needs_every_blocking_practitioner_exempt",
        DURING_SUSPENSION,
        (SUSPENDED, TERMINATED),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
        emergency=True,
    ),
    case(
        "rule4_exemption_needs_every_blocking_practitioner_exempt_unregistered_remains",
        DURING_SUSPENSION,
        (SUSPENDED, UNKNOWN),
        Verdict.BLOCK,
        Reason.UNREGISTERED,
        UNKNOWN,
        None,
        emergency=True,
    ),
    case(
        "rule4_every_blocking_practitioner_exempt_under_region_policy",
        DURING_SUSPENSION,
        (SUSPENDED, TERMINATED),
        Verdict.ALLOW_EXEMPT,
        Reason.EMERGENCY_EXEMPT,
        TERMINATED,
        TERMINATION,
        emergency=True,
        policy=BEIJING,
    ),
    case(
        "rule4_emergency_with_registered_practitioner_is_plain_allow",
        DURING_SUSPENSION,
        (REGULAR,),
        Verdict.ALLOW,
        Reason.OK,
        emergency=True,
    ),
    case(
        "rule4_emergency_exempts_suspended_executing_doctor",
        DURING_SUSPENSION,
        (REGULAR, SUSPENDED),
        Verdict.ALLOW_EXEMPT,
        Reason.EMERGENCY_EXEMPT,
        SUSPENDED,
        SUSPENSION,
        emergency=True,
    ),
    case(
        "rule4_emergency_does_not_exempt_unregistered",
        DURING_SUSPENSION,
        (UNKNOWN,),
        Verdict.BLOCK,
        Reason.UNREGISTERED,
        UNKNOWN,
        emergency=True,
    ),
    case(
        "rule4_emergency_does_not_exempt_malformed_code",
        DURING_SUSPENSION,
        ("DOC001",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "DOC001",
        emergency=True,
    ),
    case(
        "rule4_emergency_does_not_exempt_missing_practitioner",
        DURING_SUSPENSION,
        ("",),
        Verdict.BLOCK,
        Reason.MISSING_PRACTITIONER,
        "",
        emergency=True,
    ),
    # Rule 8: unregistered persons cannot settle; malformed codes are a different error.
    case("rule8_unknown_code_unregistered", DURING_SUSPENSION, (UNKNOWN,), Verdict.BLOCK, Reason.UNREGISTERED, UNKNOWN),
    case(
        "rule8_registration_not_yet_started",
        "2026-12-31 23:59:59",
        (NOT_YET_REGISTERED,),
        Verdict.BLOCK,
        Reason.UNREGISTERED,
        NOT_YET_REGISTERED,
    ),
    case(
        "rule8_registration_start_is_inclusive", "2027-01-01 00:00:00", (NOT_YET_REGISTERED,), Verdict.ALLOW, Reason.OK
    ),
    case(
        "rule8_registration_ended",
        "2025-01-01 00:00:00",
        (REGISTRATION_ENDED,),
        Verdict.BLOCK,
        Reason.UNREGISTERED,
        REGISTRATION_ENDED,
    ),
    case(
        "rule8_last_second_of_registration_settles",
        "2024-12-31 23:59:59",
        (REGISTRATION_ENDED,),
        Verdict.ALLOW,
        Reason.OK,
    ),
    case("rule8_malformed_code_009999", DURING_SUSPENSION, ("009999",), Verdict.BLOCK, Reason.MALFORMED_CODE, "009999"),
    case("rule8_malformed_code_D190", DURING_SUSPENSION, ("D190",), Verdict.BLOCK, Reason.MALFORMED_CODE, "D190"),
    case("rule8_malformed_code_DOC001", DURING_SUSPENSION, ("DOC001",), Verdict.BLOCK, Reason.MALFORMED_CODE, "DOC001"),
    case(
        "rule8_malformed_code_invalid_province_99",
        DURING_SUSPENSION,
        ("D990105000001",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "D990105000001",
    ),
    case(
        "rule8_malformed_code_lowercase_prefix",
        DURING_SUSPENSION,
        ("d110105000001",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "d110105000001",
    ),
    case(
        "rule8_malformed_code_fullwidth_digit",
        DURING_SUSPENSION,
        ("D11010500000１",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "D11010500000１",
    ),
    case(
        "rule8_malformed_code_one_digit_too_many",
        DURING_SUSPENSION,
        ("D1101050000011",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "D1101050000011",
    ),
    case(
        "rule8_malformed_code_institution_code_as_doctor",
        DURING_SUSPENSION,
        ("H41130200746",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "H41130200746",
    ),
    case(
        "rule8_malformed_code_unknown_prefix",
        DURING_SUSPENSION,
        ("X110105000001",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "X110105000001",
    ),
    case(
        "rule8_untrimmed_code_reaching_the_core_is_malformed",
        DURING_SUSPENSION,
        (" D110105000001 ",),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        " D110105000001 ",
    ),
    case(
        "rule8_region_prefixes_narrow_accepted_codes",
        DURING_SUSPENSION,
        (PHARMACIST,),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        PHARMACIST,
        policy=DOCTORS_ONLY,
    ),
    case(
        "missing_practitioner_blocks",
        DURING_SUSPENSION,
        ("",),
        Verdict.BLOCK,
        Reason.MISSING_PRACTITIONER,
        "",
    ),
    case(
        "missing_ordering_doctor_blocks_even_with_registered_executing_doctor",
        DURING_SUSPENSION,
        ("", REGULAR),
        Verdict.BLOCK,
        Reason.MISSING_PRACTITIONER,
        "",
    ),
    # Rule 9: every practitioner on the item counts; the most severe status wins.
    case(
        "rule9_executing_doctor_counts",
        DURING_SUSPENSION,
        (REGULAR, SUSPENDED),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case(
        "rule9_ordering_doctor_counts",
        DURING_SUSPENSION,
        (SUSPENDED, REGULAR),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case(
        "rule9_most_severe_wins_terminated_over_suspended",
        DURING_SUSPENSION,
        (SUSPENDED, TERMINATED),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
    ),
    case(
        "rule9_most_severe_wins_terminated_over_suspended_in_either_order",
        DURING_SUSPENSION,
        (TERMINATED, SUSPENDED),
        Verdict.BLOCK,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
    ),
    case(
        "rule9_most_severe_wins_suspended_over_unregistered",
        DURING_SUSPENSION,
        (UNKNOWN, SUSPENDED),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
    ),
    case(
        "rule9_most_severe_wins_unregistered_over_malformed",
        DURING_SUSPENSION,
        ("D190", UNKNOWN),
        Verdict.BLOCK,
        Reason.UNREGISTERED,
        UNKNOWN,
    ),
    case(
        "rule9_most_severe_wins_malformed_over_missing",
        DURING_SUSPENSION,
        ("", "D190"),
        Verdict.BLOCK,
        Reason.MALFORMED_CODE,
        "D190",
    ),
    case(
        "rule9_suspended_nurse_blocks_registered_doctors_item",
        DURING_SUSPENSION,
        (REGULAR, SUSPENDED_NURSE),
        Verdict.BLOCK,
        Reason.SUSPENDED,
        SUSPENDED_NURSE,
        NURSE_SUSPENSION,
    ),
    # Rule 10: a withdrawn window no longer counts.
    case("rule10_withdrawn_window_ignored", DURING_SUSPENSION, (WITHDRAWN,), Verdict.ALLOW, Reason.OK),
    case("rule10_withdrawn_termination_ignored", "2026-11-15 10:00:00", (WITHDRAWN,), Verdict.ALLOW, Reason.OK),
    # Rule 11: monitor mode computes and records, but blocks nothing.
    case(
        "rule11_monitor_mode_allows_but_records_reason",
        DURING_SUSPENSION,
        (SUSPENDED,),
        Verdict.ALLOW,
        Reason.SUSPENDED,
        SUSPENDED,
        SUSPENSION,
        policy=MONITOR,
    ),
    case(
        "rule11_monitor_mode_records_termination",
        DURING_SUSPENSION,
        (REGULAR, TERMINATED),
        Verdict.ALLOW,
        Reason.TERMINATED,
        TERMINATED,
        TERMINATION,
        policy=MONITOR,
    ),
    case(
        "rule11_monitor_mode_records_malformed_code",
        DURING_SUSPENSION,
        ("009999",),
        Verdict.ALLOW,
        Reason.MALFORMED_CODE,
        "009999",
        policy=MONITOR,
    ),
    case(
        "rule11_monitor_mode_keeps_emergency_exemption",
        DURING_SUSPENSION,
        (SUSPENDED,),
        Verdict.ALLOW_EXEMPT,
        Reason.EMERGENCY_EXEMPT,
        SUSPENDED,
        SUSPENSION,
        emergency=True,
        policy=MONITOR,
    ),
    case("rule11_monitor_mode_plain_allow", DURING_SUSPENSION, (REGULAR,), Verdict.ALLOW, Reason.OK, policy=MONITOR),
]


@pytest.mark.parametrize(
    ("when", "practitioners", "emergency", "policy", "verdict", "reason", "code", "window"), ITEM_CASES
)
def test_item_decision(
    when: str,
    practitioners: tuple[str, ...],
    emergency: bool,
    policy: RegionPolicy,
    verdict: Verdict,
    reason: Reason,
    code: str,
    window: StatusPeriod | None,
) -> None:
    line = item(when, *practitioners, sn="7", amount_fen=1234, emergency=emergency)

    decision = decide_item(line, REGISTRY, policy)

    assert (decision.verdict, decision.reason, decision.prac_psn_code) == (verdict, reason, code)
    assert decision.window == window
    assert decision.enforced is policy.enforced
    assert (decision.feedetl_sn, decision.amount_fen) == ("7", 1234)


def test_rule9_window_explains_the_blocking_practitioner_not_the_first_one() -> None:
    line = item(DURING_SUSPENSION, SUSPENDED, TERMINATED)

    decision = decide_item(line, REGISTRY, ENFORCE)

    assert decision.window is not None
    assert decision.window.chg_id == "C0005"
    assert decision.window.chg_rea == "终止"


def test_rule3_window_carries_the_registry_reason() -> None:
    decision = decide_item(item(DURING_SUSPENSION, SUSPENDED), REGISTRY, ENFORCE)

    assert decision.window is not None
    assert decision.window.chg_rea == "年度累计记分9分"
    assert (decision.window.begntime, decision.window.endtime) == (at("2026-10-01 00:00:00"), at("2027-01-01 00:00:00"))


def test_rule5_status_is_keyed_by_code_alone_not_by_institution() -> None:
    # The suspension was decided elsewhere; every institution in the country sees it.
    lines = (item(DURING_SUSPENSION, SUSPENDED, sn="1"), item(DURING_SUSPENSION, REGULAR, sn="2"))
    at_hospital = decide_claim(claim(*lines, fixmedins_code="H41130200746"), REGISTRY, ENFORCE)
    at_pharmacy = decide_claim(claim(*lines, fixmedins_code="P33052200672"), REGISTRY, ENFORCE)

    assert at_hospital == at_pharmacy
    assert at_hospital.items[0].verdict is Verdict.BLOCK


# --- Claims: verdicts and amounts ----------------------------------------------------------


def claim_case(
    name: str,
    lines: tuple[tuple[str, str, int, bool], ...],
    verdict: ClaimVerdict,
    allowed: int,
    blocked: int,
    item_verdicts: tuple[Verdict, ...],
    *,
    policy: RegionPolicy = ENFORCE,
) -> object:
    """A claim of ``lines`` (when, practitioner, amount in fen, emergency) and what it must get."""
    return pytest.param(lines, policy, verdict, allowed, blocked, item_verdicts, id=name)


A, B, X = Verdict.ALLOW, Verdict.BLOCK, Verdict.ALLOW_EXEMPT

CLAIM_CASES = [
    claim_case(
        "rule3_every_item_settles_claim_allowed",
        ((DURING_SUSPENSION, REGULAR, 1000, False), (DURING_SUSPENSION, PHARMACIST, 250, False)),
        ClaimVerdict.ALLOW,
        1250,
        0,
        (A, A),
    ),
    claim_case(
        "rule3_no_item_settles_claim_blocked",
        ((DURING_SUSPENSION, SUSPENDED, 1000, False), (DURING_SUSPENSION, TERMINATED, 250, False)),
        ClaimVerdict.BLOCK,
        0,
        1250,
        (B, B),
    ),
    claim_case(
        "rule6_inpatient_stay_spanning_suspension_start_settles_partially",
        (
            ("2026-09-28 09:00:00", SUSPENDED, 5000, False),
            ("2026-09-30 23:59:59", SUSPENDED, 700, False),
            ("2026-10-01 00:00:00", SUSPENDED, 3000, False),
            ("2026-10-05 08:00:00", SUSPENDED, 2000, False),
        ),
        ClaimVerdict.PARTIAL,
        5700,
        5000,
        (A, A, B, B),
    ),
    claim_case(
        "rule6_stay_spanning_suspension_end_settles_from_the_end",
        (("2026-12-31 23:59:59", SUSPENDED, 400, False), ("2027-01-01 00:00:00", SUSPENDED, 600, False)),
        ClaimVerdict.PARTIAL,
        600,
        400,
        (B, A),
    ),
    claim_case(
        "reversal_amounts_count_with_their_sign",
        (
            (BEFORE_SUSPENSION, REGULAR, 1200, False),
            (BEFORE_SUSPENSION, REGULAR, -300, False),
            (DURING_SUSPENSION, SUSPENDED, 800, False),
            (DURING_SUSPENSION, SUSPENDED, -500, False),
        ),
        ClaimVerdict.PARTIAL,
        900,
        300,
        (A, A, B, B),
    ),
    claim_case(
        "reversal_only_claim_blocked_with_negative_amount",
        ((DURING_SUSPENSION, TERMINATED, -1500, False),),
        ClaimVerdict.BLOCK,
        0,
        -1500,
        (B,),
    ),
    claim_case(
        "rule4_exempt_items_count_as_settled",
        ((DURING_SUSPENSION, SUSPENDED, 900, True), (DURING_SUSPENSION, REGULAR, 100, False)),
        ClaimVerdict.ALLOW,
        1000,
        0,
        (X, A),
    ),
    claim_case(
        "rule4_emergency_item_exempt_while_routine_item_blocked",
        ((DURING_SUSPENSION, SUSPENDED, 900, True), (DURING_SUSPENSION, SUSPENDED, 100, False)),
        ClaimVerdict.PARTIAL,
        900,
        100,
        (X, B),
    ),
    claim_case(
        "rule4_region_policy_exempts_termination_for_claim",
        ((DURING_SUSPENSION, TERMINATED, 900, True),),
        ClaimVerdict.ALLOW,
        900,
        0,
        (X,),
        policy=BEIJING,
    ),
    claim_case(
        "rule11_monitor_mode_claim_never_blocked",
        ((DURING_SUSPENSION, SUSPENDED, 1000, False), (DURING_SUSPENSION, "DOC001", 250, False)),
        ClaimVerdict.ALLOW,
        1250,
        0,
        (A, A),
        policy=MONITOR,
    ),
]


@pytest.mark.parametrize(("lines", "policy", "verdict", "allowed", "blocked", "item_verdicts"), CLAIM_CASES)
def test_claim_decision(
    lines: tuple[tuple[str, str, int, bool], ...],
    policy: RegionPolicy,
    verdict: ClaimVerdict,
    allowed: int,
    blocked: int,
    item_verdicts: tuple[Verdict, ...],
) -> None:
    request = claim(
        *(
            item(when, code, sn=f"SN{index}", amount_fen=amount, emergency=emergency)
            for index, (when, code, amount, emergency) in enumerate(lines)
        )
    )

    decision = decide_claim(request, REGISTRY, policy)

    assert decision.verdict is verdict
    assert (decision.allowed_amount_fen, decision.blocked_amount_fen) == (allowed, blocked)
    assert tuple(d.verdict for d in decision.items) == item_verdicts
    assert [d.feedetl_sn for d in decision.items] == [f"SN{index}" for index in range(len(lines))]
    assert decision.enforced is policy.enforced


def test_rule11_monitor_mode_claim_records_every_reason() -> None:
    request = claim(
        item(DURING_SUSPENSION, SUSPENDED, sn="1"),
        item(DURING_SUSPENSION, TERMINATED, sn="2"),
        item(DURING_SUSPENSION, UNKNOWN, sn="3"),
        item(DURING_SUSPENSION, REGULAR, sn="4"),
    )

    monitored = decide_claim(request, REGISTRY, MONITOR)
    enforced = decide_claim(request, REGISTRY, ENFORCE)

    assert [d.reason for d in monitored.items] == [
        Reason.SUSPENDED,
        Reason.TERMINATED,
        Reason.UNREGISTERED,
        Reason.OK,
    ]
    assert [d.reason for d in monitored.items] == [d.reason for d in enforced.items]
    assert not monitored.enforced
    assert all(not d.enforced for d in monitored.items)
    assert enforced.verdict is ClaimVerdict.PARTIAL


# --- Rule 10: the latest registry data decides ---------------------------------------------


def test_rule10_shortened_suspension_lets_yesterdays_rejected_item_pass() -> None:
    line = item("2026-11-15 10:00:00", SUSPENDED)
    assert decide_item(line, REGISTRY, ENFORCE).verdict is Verdict.BLOCK

    shortened = suspended("2026-10-01 00:00:00", "2026-11-01 00:00:00", chg_id="C0003", seq=50)
    periods = merge_period(REGISTRY[SUSPENDED].periods, shortened)
    assert periods is not None
    today = {**REGISTRY, SUSPENDED: record(*periods)}

    assert decide_item(line, today, ENFORCE).verdict is Verdict.ALLOW
    assert decide_item(item("2026-10-31 23:59:59", SUSPENDED), today, ENFORCE).verdict is Verdict.BLOCK


def test_rule10_successful_appeal_withdraws_the_window() -> None:
    appeal = withdrawn("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0003", seq=50)
    periods = merge_period(REGISTRY[SUSPENDED].periods, appeal)
    assert periods is not None
    today = {**REGISTRY, SUSPENDED: record(*periods)}

    assert decide_item(item(DURING_SUSPENSION, SUSPENDED), today, ENFORCE).reason is Reason.OK


def test_rule10_no_stay_during_appeal_an_older_change_cannot_revive_or_replace() -> None:
    stale = withdrawn("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C0003", seq=19)

    assert merge_period(REGISTRY[SUSPENDED].periods, stale) is None
    assert decide_item(item(DURING_SUSPENSION, SUSPENDED), REGISTRY, ENFORCE).reason is Reason.SUSPENDED


# --- standing_at ----------------------------------------------------------------------------

STANDING_CASES = [
    pytest.param(None, DURING_SUSPENSION, Reason.UNREGISTERED, None, id="rule8_unknown_code_unregistered"),
    pytest.param(REGISTRY[REGULAR], DURING_SUSPENSION, Reason.OK, None, id="rule2_registered"),
    pytest.param(REGISTRY[SUSPENDED], "2026-10-01 00:00:00", Reason.SUSPENDED, SUSPENSION, id="rule7_start_inclusive"),
    pytest.param(REGISTRY[SUSPENDED], "2027-01-01 00:00:00", Reason.OK, None, id="rule7_end_exclusive"),
    pytest.param(REGISTRY[TERMINATED], "2026-06-01 00:00:00", Reason.TERMINATED, TERMINATION, id="rule2_terminated"),
    pytest.param(
        REGISTRY[OVERLAPPING], "2026-11-01 00:00:00", Reason.TERMINATED, OVERLAP_TERMINATION, id="rule2_terminated_wins"
    ),
    pytest.param(REGISTRY[REREGISTERED], "2025-03-01 00:00:00", Reason.OK, None, id="rule2_reregistration"),
    pytest.param(
        REGISTRY[NOT_YET_REGISTERED], "2026-12-31 23:59:59", Reason.UNREGISTERED, None, id="rule8_not_started"
    ),
    pytest.param(REGISTRY[REGISTRATION_ENDED], "2025-01-01 00:00:00", Reason.UNREGISTERED, None, id="rule8_ended"),
    pytest.param(REGISTRY[WITHDRAWN], "2026-11-15 10:00:00", Reason.OK, None, id="rule10_withdrawn_ignored"),
    pytest.param(
        record(suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="S", seq=1)),
        DURING_SUSPENSION,
        Reason.SUSPENDED,
        suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="S", seq=1),
        id="rule3_suspension_without_registration_period_is_suspended",
    ),
    pytest.param(record(), DURING_SUSPENSION, Reason.UNREGISTERED, None, id="rule8_record_without_periods"),
]


@pytest.mark.parametrize(("practitioner", "when", "reason", "window"), STANDING_CASES)
def test_standing_at(
    practitioner: PractitionerRecord | None, when: str, reason: Reason, window: StatusPeriod | None
) -> None:
    standing = standing_at(practitioner, at(when))

    assert standing.reason is reason
    assert standing.window == window


# --- describe_practitioner (事前提醒) -------------------------------------------------------

REGISTRATION_C0002 = REGISTRY[SUSPENDED].periods[0]


def view_case(
    name: str,
    code: str,
    when: str,
    reason: Reason,
    may_bill: bool,
    may_bill_emergency: bool,
    current: StatusPeriod | None,
    upcoming: tuple[StatusPeriod, ...],
    *,
    policy: RegionPolicy = ENFORCE,
) -> object:
    """What an HIS must be told about ``code`` at ``when`` before ordering."""
    return pytest.param(code, when, policy, reason, may_bill, may_bill_emergency, current, upcoming, id=name)


VIEW_CASES = [
    view_case(
        "prealert_registered_with_upcoming_suspension",
        SUSPENDED,
        BEFORE_SUSPENSION,
        Reason.OK,
        True,
        True,
        REGISTRATION_C0002,
        (SUSPENSION,),
    ),
    view_case(
        "rule4_suspended_may_bill_emergency_only",
        SUSPENDED,
        DURING_SUSPENSION,
        Reason.SUSPENDED,
        False,
        True,
        SUSPENSION,
        (),
    ),
    view_case(
        "rule4_terminated_may_not_bill_emergency_by_default",
        TERMINATED,
        DURING_SUSPENSION,
        Reason.TERMINATED,
        False,
        False,
        TERMINATION,
        (),
    ),
    view_case(
        "rule4_region_policy_lets_terminated_bill_emergency",
        TERMINATED,
        DURING_SUSPENSION,
        Reason.TERMINATED,
        False,
        True,
        TERMINATION,
        (),
        policy=BEIJING,
    ),
    view_case(
        "rule8_unknown_code_unregistered", UNKNOWN, DURING_SUSPENSION, Reason.UNREGISTERED, False, False, None, ()
    ),
    view_case(
        "rule8_registration_not_yet_started_is_upcoming",
        NOT_YET_REGISTERED,
        DURING_SUSPENSION,
        Reason.UNREGISTERED,
        False,
        False,
        None,
        REGISTRY[NOT_YET_REGISTERED].periods,
    ),
    view_case("rule8_malformed_code", "DOC001", DURING_SUSPENSION, Reason.MALFORMED_CODE, False, False, None, ()),
    view_case("missing_code", "", DURING_SUSPENSION, Reason.MISSING_PRACTITIONER, False, False, None, ()),
    view_case(
        "rule10_withdrawn_windows_are_not_upcoming",
        WITHDRAWN,
        BEFORE_SUSPENSION,
        Reason.OK,
        True,
        True,
        REGISTRY[WITHDRAWN].periods[0],
        (),
    ),
    view_case(
        "upcoming_windows_earliest_first",
        OVERLAPPING,
        "2026-08-01 00:00:00",
        Reason.OK,
        True,
        True,
        REGISTRY[OVERLAPPING].periods[0],
        (OVERLAP_SUSPENSION, OVERLAP_TERMINATION),
    ),
    view_case(
        "rule7_window_starting_at_the_moment_is_current_not_upcoming",
        SUSPENDED,
        "2026-10-01 00:00:00",
        Reason.SUSPENDED,
        False,
        True,
        SUSPENSION,
        (),
    ),
]


@pytest.mark.parametrize(
    ("code", "when", "policy", "reason", "may_bill", "may_bill_emergency", "current", "upcoming"), VIEW_CASES
)
def test_describe_practitioner(
    code: str,
    when: str,
    policy: RegionPolicy,
    reason: Reason,
    may_bill: bool,
    may_bill_emergency: bool,
    current: StatusPeriod | None,
    upcoming: tuple[StatusPeriod, ...],
) -> None:
    view = describe_practitioner(code, REGISTRY.get(code), at(when), policy)

    assert view.standing.reason is reason
    assert (view.may_bill, view.may_bill_emergency) == (may_bill, may_bill_emergency)
    assert view.current == current
    assert view.upcoming == upcoming


def test_describe_practitioner_agrees_with_decide_item() -> None:
    for code in [*REGISTRY, UNKNOWN, "D190", ""]:
        for when in (BEFORE_SUSPENSION, DURING_SUSPENSION, "2026-11-15 10:00:00", "2025-02-01 00:00:00"):
            view = describe_practitioner(code, REGISTRY.get(code), at(when), ENFORCE)
            routine = decide_item(item(when, code), REGISTRY, ENFORCE)
            emergency = decide_item(item(when, code, emergency=True), REGISTRY, ENFORCE)
            assert view.may_bill is (routine.verdict is Verdict.ALLOW), (code, when)
            assert view.may_bill_emergency is (emergency.verdict is not Verdict.BLOCK), (code, when)
