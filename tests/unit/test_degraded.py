"""Degraded mode in the decision core: codes whose records could not be read, and the stand-in limit."""

from __future__ import annotations

import tomllib

import pytest
from builders import claim, item, record, registered, suspended, terminated

from gatekeeper.core.policy import Mode, PolicyError, RegionPolicy, Unverified, parse_policy
from gatekeeper.core.records import PractitionerRecord
from gatekeeper.core.rules import ClaimVerdict, Reason, Verdict, decide_claim, decide_item
from gatekeeper.core.standin import StandInLimiter

ALLOW_UNVERIFIED = RegionPolicy()
BLOCK_UNVERIFIED = RegionPolicy(unverified=Unverified.BLOCK)
MONITOR_BLOCK_UNVERIFIED = RegionPolicy(mode=Mode.MONITOR, unverified=Unverified.BLOCK)
BEIJING = RegionPolicy(emergency_exempts_termination=True)

REGULAR = "D110105000001"
SUSPENDED = "D410102000002"  # suspended [2026-10-01, 2027-01-01)
TERMINATED = "D410102000003"  # terminated from 2026-06-01
UNKNOWN = "D110105999999"  # the registry does not know it
CANNOT_READ = "D330522000006"  # its record could not be read
CANNOT_READ_EITHER = "D330522000007"

HELD: dict[str, PractitionerRecord] = {
    REGULAR: record(registered("2020-01-01 00:00:00", chg_id="C1")),
    SUSPENDED: record(
        registered("2019-05-01 00:00:00", chg_id="C2"),
        suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="C3"),
    ),
    TERMINATED: record(terminated("2026-06-01 00:00:00", chg_id="C4")),
}
UNREADABLE = frozenset({CANNOT_READ, CANNOT_READ_EITHER})
WHEN = "2026-11-20 10:00:00"


@pytest.mark.parametrize(
    ("practitioners", "emergency", "policy", "expected"),
    [
        pytest.param(
            (CANNOT_READ,),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.ALLOW, Reason.UNVERIFIED, CANNOT_READ, False),
            id="allow_unverified_settles_it_not_enforced",
        ),
        pytest.param(
            (CANNOT_READ,),
            False,
            BLOCK_UNVERIFIED,
            (Verdict.BLOCK, Reason.UNVERIFIED, CANNOT_READ, True),
            id="block_unverified_blocks_it",
        ),
        pytest.param(
            (CANNOT_READ,),
            False,
            MONITOR_BLOCK_UNVERIFIED,
            (Verdict.ALLOW, Reason.UNVERIFIED, CANNOT_READ, False),
            id="monitor_mode_never_blocks_even_unverified",
        ),
        pytest.param(
            (REGULAR, CANNOT_READ),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.ALLOW, Reason.UNVERIFIED, CANNOT_READ, False),
            id="one_unreadable_practitioner_makes_the_item_unverified",
        ),
        pytest.param(
            (CANNOT_READ, SUSPENDED),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.BLOCK, Reason.SUSPENDED, SUSPENDED, True),
            id="rule9_a_known_suspension_beats_an_unknown_status",
        ),
        pytest.param(
            (CANNOT_READ, TERMINATED),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.BLOCK, Reason.TERMINATED, TERMINATED, True),
            id="rule9_a_known_termination_beats_an_unknown_status",
        ),
        pytest.param(
            (CANNOT_READ, UNKNOWN),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.BLOCK, Reason.UNREGISTERED, UNKNOWN, True),
            id="rule8_a_code_known_to_be_unknown_is_still_unregistered",
        ),
        pytest.param(
            (CANNOT_READ, "DOC001"),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.BLOCK, Reason.MALFORMED_CODE, "DOC001", True),
            id="a_malformed_code_needs_no_registry",
        ),
        pytest.param(
            ("", CANNOT_READ),
            False,
            ALLOW_UNVERIFIED,
            (Verdict.BLOCK, Reason.MISSING_PRACTITIONER, "", True),
            id="a_missing_ordering_practitioner_needs_no_registry",
        ),
        pytest.param(
            (SUSPENDED, CANNOT_READ),
            True,
            BLOCK_UNVERIFIED,
            (Verdict.BLOCK, Reason.UNVERIFIED, CANNOT_READ, True),
            id="rule4_an_exemption_does_not_cover_an_unchecked_practitioner",
        ),
        pytest.param(
            (TERMINATED, CANNOT_READ),
            True,
            BEIJING,
            (Verdict.ALLOW, Reason.UNVERIFIED, CANNOT_READ, False),
            id="rule4_exempt_and_unverified_is_settled_unverified",
        ),
        pytest.param(
            (SUSPENDED,),
            False,
            BLOCK_UNVERIFIED,
            (Verdict.BLOCK, Reason.SUSPENDED, SUSPENDED, True),
            id="a_held_record_is_judged_as_usual",
        ),
    ],
)
def test_unverified_items_follow_the_region_policy(
    practitioners: tuple[str, ...],
    emergency: bool,
    policy: RegionPolicy,
    expected: tuple[Verdict, Reason, str, bool],
) -> None:
    decision = decide_item(item(WHEN, *practitioners, emergency=emergency), HELD, policy, UNREADABLE)
    assert (decision.verdict, decision.reason, decision.prac_psn_code, decision.enforced) == expected


def test_a_code_is_unverified_only_when_its_record_is_absent() -> None:
    # A store lists a code as unverified only when it has no record; if both were given,
    # the record wins: a held record is better than none.
    decision = decide_item(item(WHEN, SUSPENDED), HELD, ALLOW_UNVERIFIED, frozenset({SUSPENDED}))
    assert decision.reason is Reason.SUSPENDED


def test_without_unverified_codes_nothing_changes() -> None:
    ordinary = claim(item(WHEN, REGULAR, sn="1"), item(WHEN, SUSPENDED, sn="2"))
    assert decide_claim(ordinary, HELD, ALLOW_UNVERIFIED) == decide_claim(
        ordinary, HELD, ALLOW_UNVERIFIED, frozenset(), stand_in=0
    )


def test_unverified_items_settle_and_are_counted_as_stood_in() -> None:
    degraded = claim(
        item(WHEN, REGULAR, sn="1", amount_fen=100),
        item(WHEN, CANNOT_READ, sn="2", amount_fen=200),
        item(WHEN, SUSPENDED, sn="3", amount_fen=400),
    )
    decision = decide_claim(degraded, HELD, ALLOW_UNVERIFIED, UNREADABLE)
    assert [d.reason for d in decision.items] == [Reason.OK, Reason.UNVERIFIED, Reason.SUSPENDED]
    assert decision.verdict is ClaimVerdict.PARTIAL
    assert (decision.allowed_amount_fen, decision.blocked_amount_fen) == (300, 400)
    assert decision.stood_in == 1


def test_the_stand_in_allowance_settles_the_first_unverified_items_and_blocks_the_rest() -> None:
    degraded = claim(*(item(WHEN, CANNOT_READ, sn=str(n)) for n in range(5)))
    decision = decide_claim(degraded, HELD, ALLOW_UNVERIFIED, UNREADABLE, stand_in=2)
    assert [d.verdict for d in decision.items] == [Verdict.ALLOW] * 2 + [Verdict.BLOCK] * 3
    assert all(d.reason is Reason.UNVERIFIED for d in decision.items)
    assert decision.stood_in == 2
    assert decision.verdict is ClaimVerdict.PARTIAL

    exhausted = decide_claim(degraded, HELD, ALLOW_UNVERIFIED, UNREADABLE, stand_in=0)
    assert exhausted.verdict is ClaimVerdict.BLOCK and exhausted.stood_in == 0


def test_block_unverified_never_stands_in() -> None:
    degraded = claim(item(WHEN, CANNOT_READ, sn="1"), item(WHEN, REGULAR, sn="2"))
    decision = decide_claim(degraded, HELD, BLOCK_UNVERIFIED, UNREADABLE, stand_in=None)
    assert [d.verdict for d in decision.items] == [Verdict.BLOCK, Verdict.ALLOW]
    assert decision.stood_in == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_stand_in_limit_is_a_bucket_per_institution_refilling_per_minute() -> None:
    clock = Clock()
    limiter = StandInLimiter(clock)
    assert limiter.available("H41130200746", 0) is None  # no limit configured
    assert limiter.available("H41130200746", 60) == 60
    limiter.take("H41130200746", 60, 60)
    assert limiter.available("H41130200746", 60) == 0
    assert limiter.available("H11010500001", 60) == 60  # another institution is not affected
    clock.now += 10  # 60 a minute: 10 more after 10 seconds
    assert limiter.available("H41130200746", 60) == 10
    clock.now += 3600
    assert limiter.available("H41130200746", 60) == 60  # never above the limit


def test_stand_in_limiter_forgets_institutions_whose_bucket_is_full_again() -> None:
    clock = Clock()
    limiter = StandInLimiter(clock, max_institutions=2)
    limiter.take("H11010500001", 60, 1)
    limiter.take("H11010500002", 60, 60)
    clock.now += 5  # the first is full again, the second still draining
    limiter.take("H11010500003", 60, 60)
    assert len(limiter) == 2
    assert limiter.available("H11010500002", 60) == 5


@pytest.mark.parametrize(
    ("table", "unverified", "limit"),
    [
        pytest.param({}, Unverified.ALLOW, 0, id="default_allows_without_limit"),
        pytest.param({"unverified": "block"}, Unverified.BLOCK, 0, id="block"),
        pytest.param({"stand_in_per_minute": 120}, Unverified.ALLOW, 120, id="limit"),
    ],
)
def test_policy_settings_for_degraded_mode(table: dict[str, object], unverified: Unverified, limit: int) -> None:
    policy = parse_policy({"regions": {"41": table}})
    assert policy.for_division("411302").unverified is unverified
    assert policy.for_division("411302").stand_in_per_minute == limit


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('unverified = "deny"', id="unknown_choice"),
        pytest.param("unverified = true", id="not_a_string"),
        pytest.param("stand_in_per_minute = -1", id="negative_limit"),
        pytest.param("stand_in_per_minute = 1.5", id="fractional_limit"),
        pytest.param("stand_in_per_minute = true", id="boolean_limit"),
    ],
)
def test_bad_degraded_settings_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(tomllib.loads(f"[default]\n{text}\n"))
