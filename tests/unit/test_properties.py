"""Invariants of the decision core and of merge_period, checked with hypothesis."""

from __future__ import annotations

from dataclasses import replace

from builders import at
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import structs

from gatekeeper.core.codes import DEFAULT_PRACTITIONER_PREFIXES as NATIONAL
from gatekeeper.core.messages import item_message
from gatekeeper.core.policy import Mode, RegionPolicy, Unverified
from gatekeeper.core.records import OPEN_ENDED, PractitionerRecord, Status, StatusPeriod, merge_period
from gatekeeper.core.rules import (
    SEVERITY,
    Claim,
    ClaimVerdict,
    Item,
    Reason,
    Verdict,
    decide_claim,
    decide_item,
    unenforced,
)
from gatekeeper.core.wording import Language

EXAMPLES = settings(max_examples=200, deadline=None)

WELL_FORMED = (
    "D110105000001",
    "D410102000002",
    "D410102000003",
    "N330522000004",
    "Y110105000010",
    "J110105000013",
    "HY110105000011",
    "HJ110105000002",
)
MALFORMED = ("009999", "D190", "DOC001", "D990105000001", " D110105000001 ", "d110105000001", "H41130200746")

# Times near window boundaries are where bugs hide: anchors and the seconds either side of them.
ANCHORS = tuple(
    at(text) for text in ("2024-03-01 00:00:00", "2025-03-01 00:00:00", "2026-10-01 00:00:00", "2027-01-01 00:00:00")
)
LOW, HIGH = at("2024-01-01 00:00:00"), at("2028-01-01 00:00:00")
moments = st.one_of(
    st.builds(lambda anchor, offset: anchor + offset, st.sampled_from(ANCHORS), st.integers(-1, 1)),
    st.integers(LOW, HIGH),
)
CHG_IDS = st.sampled_from([f"c-{n}" for n in range(6)])  # few ids, so that changes to the same period collide


@st.composite
def periods(draw: st.DrawFn, chg_ids: st.SearchStrategy[str] = CHG_IDS) -> StatusPeriod:
    begntime = draw(moments)
    open_ended = draw(st.booleans())
    endtime = OPEN_ENDED if open_ended else begntime + draw(st.integers(1, 400 * 86_400))
    return StatusPeriod(
        status=int(draw(st.sampled_from(Status))),
        begntime=begntime,
        chg_id=draw(chg_ids),
        seq=draw(st.integers(0, 2**53 - 1)),
        endtime=endtime,
        ban_endtime=draw(st.sampled_from((OPEN_ENDED, begntime + 365 * 86_400))),
        chg_rea=draw(st.sampled_from(("", "暂停", '终止, "quoted"'))),
    )


# Most practitioners hold a registration from before any service time, so that the random
# windows on top of it decide; some hold only random windows.
BASE_REGISTRATION = StatusPeriod(status=int(Status.REGISTERED), begntime=LOW - 86_400, chg_id="base", seq=0)
records = st.builds(
    lambda base, extra, prac_psn_type: PractitionerRecord(prac_psn_type, (*base, *extra)),
    st.sampled_from(((BASE_REGISTRATION,), (BASE_REGISTRATION,), ())),
    st.lists(periods(), max_size=3),
    st.integers(1, 4),
)
# Most well-formed codes are known to the registry; records are keyed by well-formed codes in
# practice, but the core must not care when a malformed key slips in.
registries = st.fixed_dictionaries(
    {code: records | records | records | st.none() for code in WELL_FORMED},
    optional={code: records for code in MALFORMED},
).map(lambda registry: {code: found for code, found in registry.items() if found is not None})
policies = st.builds(
    RegionPolicy,
    mode=st.sampled_from(Mode),
    emergency_exempts_termination=st.booleans(),
    # Mostly the national prefixes; narrower regional sets turn well-formed codes malformed.
    practitioner_prefixes=st.sampled_from((NATIONAL, NATIONAL, NATIONAL, ("D",), ("D", "N"), ("HY", "HJ", "Y"))),
)
enforcing_policies = policies.map(lambda policy: replace(policy, mode=Mode.ENFORCE))
# Well-formed codes three times as often as malformed or missing ones.
codes = (
    st.sampled_from(WELL_FORMED)
    | st.sampled_from(WELL_FORMED)
    | st.sampled_from(WELL_FORMED)
    | st.sampled_from((*MALFORMED, ""))
)
practitioner_lists = st.lists(codes, min_size=1, max_size=3).map(tuple)


@st.composite
def items(draw: st.DrawFn, sn: str = "1") -> Item:
    return Item(
        feedetl_sn=sn,
        service_time=draw(moments),
        amount_fen=draw(st.integers(-(10**9), 10**9)),
        practitioners=draw(practitioner_lists),
        emergency=draw(st.booleans()),
    )


@st.composite
def claims(draw: st.DrawFn) -> Claim:
    count = draw(st.integers(1, 5))
    return Claim(
        claim_id="CLAIM",
        fixmedins_code="H41130200746",
        items=tuple(draw(items(sn=f"SN{index}")) for index in range(count)),
    )


BLOCKING_REASONS = {
    Reason.SUSPENDED,
    Reason.TERMINATED,
    Reason.UNREGISTERED,
    Reason.MALFORMED_CODE,
    Reason.MISSING_PRACTITIONER,
}


@EXAMPLES
@given(claims(), registries, policies)
def test_decide_claim_is_deterministic(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    assert decide_claim(claim, registry, policy) == decide_claim(claim, dict(registry), policy)


@EXAMPLES
@given(claims(), registries, policies)
def test_decide_claim_never_raises_and_answers_every_item_in_order(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    decision = decide_claim(claim, registry, policy)

    assert [d.feedetl_sn for d in decision.items] == [i.feedetl_sn for i in claim.items]
    for line, outcome in zip(claim.items, decision.items, strict=True):
        assert outcome.amount_fen == line.amount_fen
        assert outcome.enforced is policy.enforced
        assert outcome.prac_psn_code in line.practitioners or outcome.reason is Reason.OK
        if outcome.verdict is Verdict.BLOCK:
            assert policy.enforced and outcome.reason in BLOCKING_REASONS
        elif outcome.verdict is Verdict.ALLOW_EXEMPT:
            assert line.emergency and outcome.reason is Reason.EMERGENCY_EXEMPT
            assert outcome.window is not None
        else:
            assert outcome.reason is Reason.OK or (not policy.enforced and outcome.reason in BLOCKING_REASONS)


@EXAMPLES
@given(claims(), registries, policies)
def test_a_claim_decides_each_item_as_the_item_alone_would_be(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    # decide_claim takes a shortcut for items whose practitioners have only ever been registered.
    assert list(decide_claim(claim, registry, policy).items) == [decide_item(i, registry, policy) for i in claim.items]


@EXAMPLES
@given(claims(), registries, policies)
def test_allowed_and_blocked_amounts_add_up_to_the_claim(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    decision = decide_claim(claim, registry, policy)

    assert decision.allowed_amount_fen + decision.blocked_amount_fen == sum(i.amount_fen for i in claim.items)
    assert decision.blocked_amount_fen == sum(d.amount_fen for d in decision.items if d.verdict is Verdict.BLOCK)
    blocked = [d.verdict is Verdict.BLOCK for d in decision.items]
    expected = ClaimVerdict.BLOCK if all(blocked) else ClaimVerdict.PARTIAL if any(blocked) else ClaimVerdict.ALLOW
    assert decision.verdict is expected


@EXAMPLES
@given(items(), codes, registries, enforcing_policies)
def test_adding_a_practitioner_never_turns_a_block_into_an_allow(
    line: Item, extra: str, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    before = decide_item(line, registry, policy)
    after = decide_item(structs.replace(line, practitioners=(*line.practitioners, extra)), registry, policy)

    if before.verdict is Verdict.BLOCK:
        assert after.verdict is Verdict.BLOCK
        # Rule 9: the most severe status wins, so a block can only get more severe.
        assert SEVERITY[after.reason] >= SEVERITY[before.reason]


@EXAMPLES
@given(claims(), st.data(), registries, enforcing_policies)
def test_adding_a_practitioner_never_turns_a_blocked_claim_into_an_allowed_one(
    claim: Claim, data: st.DataObject, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    index = data.draw(st.integers(0, len(claim.items) - 1))
    extra = data.draw(codes)
    target = claim.items[index]
    widened = structs.replace(target, practitioners=(*target.practitioners, extra))
    other = structs.replace(claim, items=(*claim.items[:index], widened, *claim.items[index + 1 :]))

    before = decide_claim(claim, registry, policy)
    after = decide_claim(other, registry, policy)

    newly_blocked = before.items[index].verdict is not Verdict.BLOCK and after.items[index].verdict is Verdict.BLOCK
    assert after.items[:index] + after.items[index + 1 :] == before.items[:index] + before.items[index + 1 :]
    assert after.blocked_amount_fen == before.blocked_amount_fen + (widened.amount_fen if newly_blocked else 0)
    if before.verdict is ClaimVerdict.BLOCK:
        assert after.verdict is ClaimVerdict.BLOCK


@EXAMPLES
@given(claims(), registries, policies)
def test_monitor_mode_never_blocks_and_keeps_the_reasons_of_enforce_mode(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    enforced = decide_claim(claim, registry, replace(policy, mode=Mode.ENFORCE))
    monitored = decide_claim(claim, registry, replace(policy, mode=Mode.MONITOR))

    assert monitored.verdict is ClaimVerdict.ALLOW
    assert monitored.blocked_amount_fen == 0
    assert not monitored.enforced
    for strict, lenient in zip(enforced.items, monitored.items, strict=True):
        assert lenient.verdict is not Verdict.BLOCK
        assert not lenient.enforced
        assert (lenient.reason, lenient.prac_psn_code, lenient.window) == (
            strict.reason,
            strict.prac_psn_code,
            strict.window,
        )
        if strict.verdict is Verdict.ALLOW_EXEMPT:
            assert lenient.verdict is Verdict.ALLOW_EXEMPT


# --- merge_period ---------------------------------------------------------------------------

# The registry numbers changes with one strictly increasing counter: one seq, one change.
FOUR_IDS = st.sampled_from(["c-0", "c-1", "c-2", "c-3"])
change_sets = st.lists(periods(chg_ids=FOUR_IDS), max_size=8, unique_by=lambda p: p.seq)


def apply_all(changes: list[StatusPeriod]) -> tuple[StatusPeriod, ...]:
    stored: tuple[StatusPeriod, ...] = ()
    for change in changes:
        merged = merge_period(stored, change)
        if merged is not None:
            stored = merged
    return stored


@EXAMPLES
@given(change_sets, st.data())
def test_merge_period_result_does_not_depend_on_delivery_order(
    changes: list[StatusPeriod], data: st.DataObject
) -> None:
    reordered = data.draw(st.permutations(changes))

    in_order = apply_all(changes)

    assert set(apply_all(reordered)) == set(in_order)
    latest: dict[str | int, StatusPeriod] = {}
    for change in changes:
        if change.chg_id not in latest or change.seq > latest[change.chg_id].seq:
            latest[change.chg_id] = change
    assert sorted(in_order, key=lambda p: str(p.chg_id)) == sorted(latest.values(), key=lambda p: str(p.chg_id))


@EXAMPLES
@given(change_sets)
def test_merge_period_reapplying_a_delivered_change_is_a_no_op(changes: list[StatusPeriod]) -> None:
    stored = apply_all(changes)

    for change in changes:
        assert merge_period(stored, change) is None


@EXAMPLES
@given(change_sets, periods(chg_ids=FOUR_IDS))
def test_merge_period_keeps_one_period_per_change_id(changes: list[StatusPeriod], incoming: StatusPeriod) -> None:
    merged = merge_period(apply_all(changes), incoming)

    if merged is not None:
        assert incoming in merged
        assert len({p.chg_id for p in merged}) == len(merged)


@settings(max_examples=100, deadline=None)  # the words are one lookup per reason: fewer examples suffice
@given(
    claims(),
    registries,
    policies,
    st.sampled_from(Language),
    st.sampled_from(Unverified),
    st.booleans(),
    st.sets(st.sampled_from(WELL_FORMED)),
)
def test_every_item_gets_words_naming_its_practitioner_with_every_placeholder_filled(
    claim: Claim,
    registry: dict[str, PractitionerRecord],
    policy: RegionPolicy,
    language: Language,
    unverified: Unverified,
    unrecorded: bool,
    cannot_read: set[str],
) -> None:
    region = replace(policy, language=language, unverified=unverified)
    readable = {code: found for code, found in registry.items() if code not in cannot_read}
    decision = decide_claim(claim, readable, region, frozenset(cannot_read))
    if unrecorded:
        decision = unenforced(decision)

    for outcome in decision.items:
        text = item_message(outcome, region.wording)
        assert text and "{" not in text and "}" not in text
        assert outcome.prac_psn_code in text
