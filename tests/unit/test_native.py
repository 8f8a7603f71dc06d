"""The C path (gatekeeper/_speedups.c) answers as the Python it stands in for, or declines.

Each C function is held to its Python on generated requests, registries and decisions, and
on requests mutated byte by byte: where the Python raises, the C declines (None); where the
C answers, its answer equals the Python's. And it does answer the plain claims it is for.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from builders import at, item, record, registered, suspended, withdrawn
from builders import claim as claim_of
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import structs
from test_properties import claims, policies, registries

from gatekeeper.api.servicer import claim_response
from gatekeeper.api.validation import Limits, claim_from_request, wire_bounds
from gatekeeper.core import native
from gatekeeper.core.errors import InvalidArgument
from gatekeeper.core.policy import Mode, RegionPolicy
from gatekeeper.core.records import PractitionerRecord
from gatekeeper.core.rules import Claim, ClaimDecision, ClaimVerdict, Reason, Verdict, decide_claim, unenforced
from gatekeeper.v1 import gatekeeper_pb2 as pb

EXAMPLES = settings(max_examples=300, deadline=None)
LIMITS = Limits(max_items=6)

built = pytest.mark.skipif(not native.BUILT, reason="gatekeeper._speedups was not built (no C compiler)")


def test_the_c_path_is_built_where_the_tests_require_it() -> None:
    # scripts/test requires it: scripts/install puts a C compiler on the machine.
    if os.environ.get("GATEKEEPER_REQUIRE_SPEEDUPS") == "1":
        assert native.BUILT, "gatekeeper._speedups was not built: is a C compiler installed?"
    else:
        pytest.skip("GATEKEEPER_REQUIRE_SPEEDUPS is not set")


# --- parse_claim: the Claim claim_from_request makes of the request's bytes -----------------


def python_claim(data: bytes, limits: Limits = LIMITS) -> Claim | None:
    """What the Python makes of a request's bytes: its Claim, or None where it refuses them."""
    try:
        return claim_from_request(pb.CheckClaimRequest.FromString(data), limits, sized=True)
    except (DecodeError, InvalidArgument):
        return None


def c_claim(data: bytes, limits: Limits = LIMITS) -> Claim | None:
    assert native.parse_claim is not None
    return native.parse_claim(data, wire_bounds(limits))


TIMES = (
    "2026-11-20 08:00:00",
    "2024-02-29 23:59:59",
    "1970-01-01 00:00:00",
    "2099-12-31 23:59:59",
    "2026-02-29 08:00:00",  # no such day
    "1969-12-31 23:59:59",  # before 1970
    "2100-01-01 00:00:00",  # after 2099
    "2026-11-20 24:00:00",
    "2026-11-20T08:00:00",
    "2026-11-20 08:00",
    "２026-11-20 08:00:00",
    "",
)
SERIAL_NUMBERS = ("1", "2", "SN-0001", " 3", "4 ", "", "x" * 64, "x" * 65, "序号")
CODES = ("D410102000002", "D110105000001", "N330522000004", "DOC001", "", " D410102000002", "D" * 33, "医生")
INSTITUTIONS = ("H41130200746", "P11010500001", "H99130200746", "h41130200746", " H41130200746", "", "H4113020074")
AMOUNTS = (0, 1, -1, 2550, 10**12, -(10**12), 10**12 + 1, -(10**12) - 1, 2**63 - 1, -(2**63))

line_items = st.builds(
    pb.LineItem,
    feedetl_sn=st.sampled_from(SERIAL_NUMBERS),
    fee_ocur_time=st.sampled_from(TIMES[:4]) | st.sampled_from(TIMES),
    med_list_codg=st.sampled_from(("", "XA01", "Y" * 64, "Y" * 65, "药品")),
    amount_fen=st.sampled_from(AMOUNTS) | st.integers(-(10**12), 10**12),
    bilg_dr_codg=st.sampled_from(CODES[:3]) | st.sampled_from(CODES),
    orders_dr_code=st.sampled_from(("", "", *CODES)),
    emergency=st.booleans(),
)
requests = st.builds(
    pb.CheckClaimRequest,
    claim_id=st.sampled_from(("CLAIM-1", "CLAIM-1", "", " CLAIM-1", "c" * 64, "c" * 65, "理赔")),
    fixmedins_code=st.sampled_from(INSTITUTIONS[:2]) | st.sampled_from(INSTITUTIONS),
    med_type=st.sampled_from(("", "11", "m" * 65, "门诊")),
    emergency=st.booleans(),
    items=st.lists(line_items, max_size=LIMITS.max_items + 1),
    mdtrt_id=st.sampled_from(("", "MDTRT-9", "v" * 64, "v" * 65)),
    min_registry_version=st.sampled_from(("", "", "", "demo@3")),
)


def plain_request(items: int = 3) -> pb.CheckClaimRequest:
    return pb.CheckClaimRequest(
        claim_id="CLAIM-1",
        fixmedins_code="H41130200746",
        med_type="11",
        mdtrt_id="MDTRT-9",
        items=[
            pb.LineItem(
                feedetl_sn=str(number),
                fee_ocur_time="2026-11-20 08:00:00",
                med_list_codg="XA01",
                amount_fen=100 * number - 150,
                bilg_dr_codg="D410102000002",
                orders_dr_code="D110105000001" if number % 2 else "",
                emergency=number == 2,
            )
            for number in range(1, items + 1)
        ],
    )


@built
def test_a_plain_request_is_parsed_into_the_claim_the_python_makes() -> None:
    data = plain_request().SerializeToString()
    parsed = c_claim(data)
    assert parsed is not None
    assert parsed == python_claim(data)


@built
@EXAMPLES
@given(requests)
def test_parse_claim_declines_what_the_python_refuses_and_agrees_with_what_it_accepts(
    request: pb.CheckClaimRequest,
) -> None:
    data = request.SerializeToString()
    parsed = c_claim(data)
    assert parsed is None or parsed == python_claim(data)


@built
@EXAMPLES
@given(st.data())
def test_parse_claim_holds_to_the_python_on_requests_mutated_byte_by_byte(data: st.DataObject) -> None:
    original = bytearray(plain_request(data.draw(st.integers(1, 4))).SerializeToString())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(original) - 1))
        change = data.draw(st.sampled_from(("flip", "cut", "insert")))
        if change == "flip":
            original[position] = data.draw(st.integers(0, 255))
        elif change == "cut":
            del original[position:]
            if not original:
                break
        else:
            original.insert(position, data.draw(st.integers(0, 255)))
    mutated = bytes(original)
    parsed = c_claim(mutated)
    assert parsed is None or parsed == python_claim(mutated)


def with_value(field: str, value: object) -> pb.CheckClaimRequest:
    """The plain request with one field of the claim, or of its first item, set to ``value``."""
    request = plain_request()
    if field in pb.LineItem.DESCRIPTOR.fields_by_name:
        setattr(request.items[0], field, value)
    else:
        setattr(request, field, value)
    return request


# Every value from the pools above, on an otherwise plain request: the generated requests
# above rarely get all their other fields right at once.
ONE_FIELD = [
    *(("claim_id", v) for v in ("", " CLAIM-1", "c" * 64, "c" * 65, "理赔")),
    *(("fixmedins_code", v) for v in INSTITUTIONS),
    *(("med_type", v) for v in ("m" * 64, "m" * 65, "门诊")),
    *(("mdtrt_id", v) for v in ("v" * 64, "v" * 65)),
    ("min_registry_version", "demo@3"),
    *(("fee_ocur_time", v) for v in TIMES),
    *(("feedetl_sn", v) for v in SERIAL_NUMBERS),
    ("feedetl_sn", "2"),  # the second item's
    *(("med_list_codg", v) for v in ("Y" * 64, "Y" * 65, "药品")),
    *(("amount_fen", v) for v in AMOUNTS),
    *(("bilg_dr_codg", v) for v in CODES),
    *(("orders_dr_code", v) for v in CODES),
]


@built
@pytest.mark.parametrize(("field", "value"), ONE_FIELD)
def test_one_field_off_the_plain_path_is_declined_when_the_python_refuses_it(field: str, value: object) -> None:
    data = with_value(field, value).SerializeToString()
    parsed, expected = c_claim(data), python_claim(data)
    assert parsed is None or parsed == expected
    if expected is None:
        assert parsed is None


@built
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fixmedins_code", "P11010500001"),
        *(("fee_ocur_time", v) for v in TIMES[:4]),
        *(("amount_fen", v) for v in (0, 10**12, -(10**12))),
        ("claim_id", "c" * 64),
        ("feedetl_sn", "x" * 64),
        ("med_list_codg", "Y" * 64),
        ("orders_dr_code", "D410102000002"),  # the ordering practitioner's code again: one practitioner
        ("bilg_dr_codg", ""),  # missing: decided, not refused
    ],
)
def test_plain_values_at_their_limits_stay_on_the_c_path(field: str, value: object) -> None:
    data = with_value(field, value).SerializeToString()
    assert c_claim(data) == python_claim(data) is not None


@built
@pytest.mark.parametrize(
    ("bound", "field", "value"),
    [
        (1, "claim_id", "CLAIM-123"),  # the ids' length
        (2, "bilg_dr_codg", "D410102000002"),  # the codes' length
        (3, "med_list_codg", "XA0123456"),  # the texts' length
        (4, "amount_fen", 9),  # the amounts'
    ],
)
def test_the_c_path_holds_requests_to_the_bounds_the_python_hands_it(bound: int, field: str, value: object) -> None:
    # It has no bounds of its own (validation.wire_bounds): tighten one and it declines.
    data = with_value(field, value).SerializeToString()
    assert native.parse_claim is not None
    bounds = list(wire_bounds(LIMITS))
    assert native.parse_claim(data, tuple(bounds)) == python_claim(data) is not None
    bounds[bound] = 8
    assert native.parse_claim(data, tuple(bounds)) is None


@built
def test_a_request_demanding_a_registry_version_is_left_to_the_python() -> None:
    # claim_from_request does not read min_registry_version, the servicer does: the claims the
    # C path parses are answered from whatever registry version the cache holds.
    assert c_claim(with_value("min_registry_version", "demo@3").SerializeToString()) is None


def unknown_field(number: int, value: int) -> bytes:
    return bytes([number << 3 | 0, value])


@built
def test_unknown_fields_are_skipped_as_protobuf_skips_them() -> None:
    data = plain_request().SerializeToString() + unknown_field(15, 1)
    assert c_claim(data) == python_claim(data) is not None


@built
@pytest.mark.parametrize(
    "what",
    ["a claim field sent twice", "an item field sent twice", "a field with another wire type", "a group"],
)
def test_what_the_c_path_does_not_read_as_protobuf_would_is_left_to_the_python(what: str) -> None:
    data = plain_request().SerializeToString()
    if what == "a claim field sent twice":
        data += pb.CheckClaimRequest(claim_id="CLAIM-2").SerializeToString()
    elif what == "an item field sent twice":
        line = pb.LineItem(feedetl_sn="9", fee_ocur_time="2026-11-20 08:00:00", bilg_dr_codg="D410102000002")
        item_bytes = line.SerializeToString() + pb.LineItem(amount_fen=5).SerializeToString() * 2
        data += bytes([5 << 3 | 2, len(item_bytes)]) + item_bytes
    elif what == "a field with another wire type":
        data += bytes([4 << 3 | 2, 0])  # emergency, length-delimited
    else:
        data += bytes([15 << 3 | 3, 15 << 3 | 4])
    assert c_claim(data) is None


@built
def test_more_items_than_the_limit_are_left_to_the_python_to_refuse() -> None:
    data = plain_request(LIMITS.max_items + 1).SerializeToString()
    assert python_claim(data) is None
    assert c_claim(data) is None
    assert c_claim(data, Limits(max_items=LIMITS.max_items + 1)) == python_claim(data, replace(LIMITS, max_items=7))


# --- decide_registered: decide_claim for practitioners who were only ever registered --------


def well_formed_codes(claim: Claim, policy: RegionPolicy) -> set[str]:
    return {code for line in claim.items for code in line.practitioners if policy.is_practitioner_code(code)}


def c_decision(claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy) -> ClaimDecision | None:
    assert native.decide_registered is not None
    return native.decide_registered(claim.items, registry, well_formed_codes(claim, policy), policy.enforced)


@built
@EXAMPLES
@given(claims(), registries, policies)
def test_decide_registered_agrees_with_decide_claim_or_declines(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy
) -> None:
    decision = c_decision(claim, registry, policy)
    assert decision is None or decision == decide_claim(claim, registry, policy)


@built
@pytest.mark.parametrize("mode", list(Mode))
def test_practitioners_registered_at_the_service_time_are_decided_in_c(mode: Mode) -> None:
    policy = RegionPolicy(mode=mode)
    registry = {
        "D410102000002": record(registered("2020-01-01 00:00:00", chg_id="R1")),
        "D110105000001": record(
            withdrawn("2019-01-01 00:00:00", chg_id="W1"),
            registered("2019-01-01 00:00:00", "2026-01-01 00:00:00", chg_id="R2"),
            registered("2026-01-01 00:00:00", chg_id="R3"),
        ),
    }
    claim = claim_of(
        item("2026-11-20 08:00:00", "D410102000002", "D110105000001", sn="1", amount_fen=250),
        item("2025-06-01 08:00:00", "D110105000001", sn="2", amount_fen=-50, emergency=True),
        item("2026-01-01 00:00:00", "D110105000001", sn="3", amount_fen=7),  # the second window's first second
    )
    decision = c_decision(claim, registry, policy)
    assert decision is not None
    assert decision == decide_claim(claim, registry, policy)
    assert [d.verdict for d in decision.items] == [Verdict.ALLOW, Verdict.ALLOW, Verdict.ALLOW]
    assert decision.allowed_amount_fen == 207


@built
@pytest.mark.parametrize(
    ("periods", "when"),
    [
        (
            (
                registered("2020-01-01 00:00:00", chg_id="R1"),
                suspended("2030-01-01 00:00:00", "2030-02-01 00:00:00", chg_id="S1"),
            ),
            "2026-11-20 08:00:00",
        ),
        ((registered("2027-01-01 00:00:00", chg_id="R1"),), "2026-11-20 08:00:00"),
        ((registered("2020-01-01 00:00:00", "2026-11-20 08:00:00", chg_id="R1"),), "2026-11-20 08:00:00"),
        ((withdrawn("2020-01-01 00:00:00", chg_id="W1"),), "2026-11-20 08:00:00"),
    ],
    ids=["ever suspended", "not yet registered", "registration ended", "only withdrawn"],
)
def test_a_practitioner_not_plainly_registered_is_left_to_the_python(periods: tuple, when: str) -> None:
    registry = {"D410102000002": record(*periods)}
    claim = claim_of(item(when, "D410102000002"))
    assert c_decision(claim, registry, RegionPolicy()) is None


@built
def test_a_code_the_region_does_not_accept_is_left_to_the_python_even_with_a_record() -> None:
    registry = {"D410102000002": record(registered("2020-01-01 00:00:00", chg_id="R1"))}
    claim = claim_of(item("2026-11-20 08:00:00", "D410102000002"))
    nurses_only = RegionPolicy(practitioner_prefixes=("N",))
    assert c_decision(claim, registry, nurses_only) is None
    assert decide_claim(claim, registry, nurses_only).items[0].reason is Reason.MALFORMED_CODE


# --- encode_allowed: the response bytes of a decision allowing every item -------------------


def c_bytes(decision: ClaimDecision, policy: RegionPolicy) -> bytes | None:
    assert native.encode_allowed is not None
    return native.encode_allowed(decision, "f777142f1c7b3b476fe8134b8fd58430", "demo-20261120@32", policy.wording.ok)


def python_bytes(decision: ClaimDecision, policy: RegionPolicy) -> bytes:
    response = claim_response(decision, "f777142f1c7b3b476fe8134b8fd58430", "demo-20261120@32", policy.wording)
    return response.SerializeToString()


def all_allowed(decision: ClaimDecision) -> bool:
    return all(d.verdict is Verdict.ALLOW and d.reason is Reason.OK and d.window is None for d in decision.items)


@built
@EXAMPLES
@given(claims(), registries, policies, st.booleans())
def test_encode_allowed_writes_the_bytes_the_python_writes_for_every_allowed_decision(
    claim: Claim, registry: dict[str, PractitionerRecord], policy: RegionPolicy, settled_unrecorded: bool
) -> None:
    decision = decide_claim(claim, registry, policy)
    if settled_unrecorded:
        decision = unenforced(decision)
    encoded = c_bytes(decision, policy)
    if all_allowed(decision):
        assert encoded == python_bytes(decision, policy)
    else:
        assert encoded is None


@built
def test_an_allowed_claim_is_encoded_with_the_regions_words() -> None:
    registry = {"D410102000002": record(registered("2020-01-01 00:00:00", chg_id="R1"))}
    claim = claim_of(item("2026-11-20 08:00:00", "D410102000002", amount_fen=-(10**12)))
    for policy in (RegionPolicy(), RegionPolicy(mode=Mode.MONITOR), RegionPolicy(messages={"ok": "可结算"})):
        decision = decide_claim(claim, registry, policy)
        encoded = c_bytes(decision, policy)
        assert encoded == python_bytes(decision, policy)
        assert encoded is not None
        assert pb.CheckClaimResponse.FromString(encoded).items[0].message == policy.wording.ok


def test_times_the_c_path_reads_are_those_of_the_python() -> None:
    # The calendar arithmetic in C, held to parse_cst on the days where it could slip.
    if not native.BUILT:
        pytest.skip("gatekeeper._speedups was not built")
    days = ("1970-01-01", "1999-12-31", "2000-02-29", "2024-02-29", "2024-03-01", "2096-02-29", "2099-12-31")
    for day in days:
        data = pb.CheckClaimRequest(
            claim_id="C",
            fixmedins_code="H41130200746",
            items=[pb.LineItem(feedetl_sn="1", fee_ocur_time=f"{day} 23:59:59", bilg_dr_codg="D410102000002")],
        ).SerializeToString()
        parsed = c_claim(data)
        assert parsed is not None
        assert parsed.items[0].service_time == at(f"{day} 23:59:59")


# --- found by review: what the C once accepted or mishandled -----------------------------


def padded_varint(value: int, width: int) -> bytes:
    """``value`` as a varint of exactly ``width`` bytes (protobuf allows non-minimal ones)."""
    out = [(value >> (7 * i)) & 0x7F | 0x80 for i in range(width - 1)]
    return bytes([*out, value >> (7 * (width - 1))])


@built
@pytest.mark.parametrize("width", [2, 5, 6, 10])
def test_a_tag_or_length_padded_past_five_bytes_is_corrupt_to_protobuf_and_declined(width: int) -> None:
    data = plain_request().SerializeToString()
    assert data[0] == 1 << 3 | 2  # claim_id, then its length
    padded_tag = padded_varint(data[0], width) + data[1:]
    padded_length = data[:1] + padded_varint(data[1], width) + data[2:]
    for mutated in (padded_tag, padded_length):
        parsed, expected = c_claim(mutated), python_claim(mutated)
        assert (expected is None) == (width > 5)  # upb reads tags and lengths of at most 5 bytes
        assert parsed == expected


@built
def test_an_item_decision_whose_fields_are_computed_is_encoded_from_live_strings() -> None:
    class Computed:
        """An allowed item decision whose text fields are made afresh on each read (and freed after)."""

        verdict, reason, window, enforced, amount_fen, role = Verdict.ALLOW, Reason.OK, None, True, 1, 1

        @property
        def feedetl_sn(self) -> str:
            return "".join(["s"] * 4_000_000)  # large enough to be returned to the system when freed

        @property
        def prac_psn_code(self) -> str:
            return "".join(["c"] * 4_000_000)

    decision = ClaimDecision(ClaimVerdict.ALLOW, (Computed(),), 1, 0, True)  # type: ignore[arg-type]
    assert c_bytes(decision, RegionPolicy()) == python_bytes(decision, RegionPolicy())


@built
@pytest.mark.parametrize("field", ["status", "begntime", "endtime"])
def test_a_period_number_beyond_64_bits_is_left_to_the_python_not_an_error(field: str) -> None:
    period = registered("2020-01-01 00:00:00", chg_id="R1")
    registry = {"D410102000002": record(structs.replace(period, **{field: 2**63}))}
    claim = claim_of(item("2026-11-20 08:00:00", "D410102000002"))
    assert c_decision(claim, registry, RegionPolicy()) is None
    assert decide_claim(claim, registry, RegionPolicy()).items  # the Python decides it


@built
def test_amounts_summing_beyond_64_bits_are_left_to_the_python_not_an_error() -> None:
    registry = {"D410102000002": record(registered("2020-01-01 00:00:00", chg_id="R1"))}
    claim = claim_of(*(item("2026-11-20 08:00:00", "D410102000002", sn=str(n), amount_fen=2**62) for n in range(3)))
    assert c_decision(claim, registry, RegionPolicy()) is None
    assert decide_claim(claim, registry, RegionPolicy()).allowed_amount_fen == 3 * 2**62
