"""Bad input is refused with the field and item index named; bad practitioner codes are decided, not refused."""

from __future__ import annotations

import grpc
import pytest
from builders import at

from gatekeeper import defaults
from gatekeeper.api.errors import status_code
from gatekeeper.api.validation import Limits, claim_from_request, institution_code
from gatekeeper.core.errors import InvalidArgument
from gatekeeper.v1 import gatekeeper_pb2 as pb

DOCTOR = "D110105000001"
NURSE = "N330522000004"


def line(sn: str = "1", **fields: object) -> pb.LineItem:
    """A valid line item unless ``fields`` says otherwise."""
    values: dict[str, object] = {
        "feedetl_sn": sn,
        "fee_ocur_time": "2026-11-20 10:00:00",
        "med_list_codg": "XA01AAA001",
        "amount_fen": 1250,
        "bilg_dr_codg": DOCTOR,
    }
    values.update(fields)
    return pb.LineItem(**values)  # type: ignore[arg-type]


def request(*items: pb.LineItem, **fields: object) -> pb.CheckClaimRequest:
    """A valid claim of ``items`` (one default item when none are given) unless ``fields`` says otherwise."""
    values: dict[str, object] = {
        "claim_id": "CLAIM-2026-0001",
        "fixmedins_code": "H41130200746",
        "med_type": "11",
        "items": list(items) if items else [line()],
    }
    values.update(fields)
    return pb.CheckClaimRequest(**values)  # type: ignore[arg-type]


BAD_REQUESTS = [
    pytest.param(request(claim_id=""), Limits(), "claim_id", id="missing_claim_id"),
    pytest.param(request(claim_id="   "), Limits(), "claim_id", id="blank_claim_id"),
    pytest.param(request(claim_id="C" * 65), Limits(), "claim_id", id="claim_id_too_long"),
    pytest.param(request(fixmedins_code=""), Limits(), "fixmedins_code", id="missing_fixmedins_code"),
    pytest.param(request(fixmedins_code="H4113020074"), Limits(), "fixmedins_code", id="fixmedins_code_too_short"),
    pytest.param(request(fixmedins_code="H99130200746"), Limits(), "fixmedins_code", id="fixmedins_code_province_99"),
    pytest.param(request(fixmedins_code="D110105000001"), Limits(), "fixmedins_code", id="fixmedins_code_is_a_doctor"),
    pytest.param(request(fixmedins_code="X41130200746"), Limits(), "fixmedins_code", id="fixmedins_code_bad_letter"),
    pytest.param(request(fixmedins_code="H4113020074６"), Limits(), "fixmedins_code", id="fixmedins_code_fullwidth"),
    pytest.param(request(items=[]), Limits(), "items", id="no_items"),
    pytest.param(
        request(*(line(str(n)) for n in range(4))), Limits(max_items=3), "items", id="more_items_than_the_maximum"
    ),
    pytest.param(
        request(*(line(str(n)) for n in range(3))), Limits(max_request_bytes=100), "request", id="oversize_request"
    ),
    pytest.param(
        request(*(line(str(n)) for n in range(3)), claim_id=""),
        Limits(max_request_bytes=100),
        "request",
        id="oversize_request_refused_before_reading_it",
    ),
    pytest.param(request(line("1"), line("")), Limits(), "items[1].feedetl_sn", id="missing_feedetl_sn"),
    pytest.param(request(line("1"), line("2"), line("1")), Limits(), "items[2].feedetl_sn", id="duplicate_feedetl_sn"),
    pytest.param(
        request(line("1"), line(" 1 ")), Limits(), "items[1].feedetl_sn", id="duplicate_feedetl_sn_after_trim"
    ),
    pytest.param(request(line("S" * 65)), Limits(), "items[0].feedetl_sn", id="feedetl_sn_too_long"),
    pytest.param(request(mdtrt_id="M" * 65), Limits(), "mdtrt_id", id="mdtrt_id_too_long"),
    pytest.param(request(med_type="1" * 65), Limits(), "med_type", id="med_type_too_long"),
    pytest.param(
        request(line("1"), line("2", bilg_dr_codg="D" * 33)), Limits(), "items[1].bilg_dr_codg", id="code_too_long"
    ),
    pytest.param(
        request(line("1", orders_dr_code="N" * 33)), Limits(), "items[0].orders_dr_code", id="executing_too_long"
    ),
    pytest.param(
        request(line("1", med_list_codg="X" * 65)), Limits(), "items[0].med_list_codg", id="med_list_codg_too_long"
    ),
    pytest.param(
        request(line("1", amount_fen=10**12 + 1)), Limits(), "items[0].amount_fen", id="amount_beyond_the_bound"
    ),
    pytest.param(
        request(line("1", amount_fen=-(2**63))), Limits(), "items[0].amount_fen", id="reversal_beyond_the_bound"
    ),
]

BAD_TIMES = [
    "2026/11/20 10:00:00",
    "2026-11-20T10:00:00",
    "2026-02-30 10:00:00",
    "2026-11-20 24:00:00",
    "2026-11-20 10:60:00",
    "",
    "2026-11-20 10:00",
    "2026-11-20",
    "2026-11-20 10:00:00.000",
    "2026-11-20 10:00:00+08:00",
    " 2026-11-20 10:00:00",
    "２０２６-11-20 10:00:00",
    "2026-1-20 10:00:000",
    "20261120 100000",
]


@pytest.mark.parametrize(("bad", "limits", "field"), BAD_REQUESTS)
def test_bad_request_names_the_field(bad: pb.CheckClaimRequest, limits: Limits, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        claim_from_request(bad, limits)

    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


@pytest.mark.parametrize("fee_ocur_time", BAD_TIMES)
def test_unparsable_fee_ocur_time_names_the_item(fee_ocur_time: str) -> None:
    bad = request(line("1"), line("2", fee_ocur_time=fee_ocur_time))

    with pytest.raises(InvalidArgument) as refused:
        claim_from_request(bad, Limits())

    assert refused.value.field == "items[1].fee_ocur_time"


def test_status_code_of_bad_input_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as refused:
        claim_from_request(request(claim_id=""), Limits())

    assert status_code(refused.value) is grpc.StatusCode.INVALID_ARGUMENT


def test_items_at_the_maximum_are_accepted() -> None:
    claim = claim_from_request(request(*(line(str(n)) for n in range(3))), Limits(max_items=3))

    assert len(claim.items) == 3


def test_default_maximum_is_five_thousand_items() -> None:
    assert Limits().max_items == defaults.MAX_ITEMS == 5_000


def test_request_within_size_limit_is_accepted() -> None:
    good = request()

    assert claim_from_request(good, Limits(max_request_bytes=good.ByteSize())).claim_id == "CLAIM-2026-0001"


def test_valid_request_becomes_a_claim() -> None:
    claim = claim_from_request(
        request(
            line("1", amount_fen=1250),
            line("2", amount_fen=-300, fee_ocur_time="2026-11-20 23:59:59", orders_dr_code=NURSE, emergency=True),
        ),
        Limits(),
    )

    assert (claim.claim_id, claim.fixmedins_code) == ("CLAIM-2026-0001", "H41130200746")
    first, second = claim.items
    assert (first.feedetl_sn, first.service_time, first.amount_fen) == ("1", at("2026-11-20 10:00:00"), 1250)
    assert first.practitioners == (DOCTOR,)
    assert not first.emergency
    assert (second.service_time, second.amount_fen) == (at("2026-11-20 23:59:59"), -300)
    assert second.practitioners == (DOCTOR, NURSE)
    assert second.emergency


def test_ids_and_institution_code_are_trimmed() -> None:
    claim = claim_from_request(
        request(line(" 7 "), claim_id="  CLAIM-9 ", fixmedins_code=" P33052200672\t"),
        Limits(),
    )

    assert (claim.claim_id, claim.fixmedins_code, claim.items[0].feedetl_sn) == ("CLAIM-9", "P33052200672", "7")


@pytest.mark.parametrize(
    ("bilg_dr_codg", "orders_dr_code", "practitioners"),
    [
        pytest.param(" D110105000001 ", "", (DOCTOR,), id="ordering_code_trimmed"),
        pytest.param(DOCTOR, "\tN330522000004 ", (DOCTOR, NURSE), id="executing_code_trimmed"),
        pytest.param(DOCTOR, DOCTOR, (DOCTOR,), id="executing_equal_to_ordering_not_duplicated"),
        pytest.param(DOCTOR, f" {DOCTOR} ", (DOCTOR,), id="executing_equal_to_ordering_after_trim_not_duplicated"),
        pytest.param(DOCTOR, "   ", (DOCTOR,), id="blank_executing_code_dropped"),
        pytest.param("", "", ("",), id="missing_ordering_code_kept_as_empty"),
        pytest.param("", NURSE, ("", NURSE), id="missing_ordering_code_with_executing"),
        pytest.param("\u3000D110105000001\u3000", "", (DOCTOR,), id="ideographic_space_trimmed"),
    ],
)
def test_practitioner_codes_are_trimmed_ordering_first(
    bilg_dr_codg: str, orders_dr_code: str, practitioners: tuple[str, ...]
) -> None:
    claim = claim_from_request(request(line(bilg_dr_codg=bilg_dr_codg, orders_dr_code=orders_dr_code)), Limits())

    assert claim.items[0].practitioners == practitioners


def test_claim_level_emergency_flag_marks_every_item() -> None:
    claim = claim_from_request(request(line("1"), line("2"), line("3", emergency=True), emergency=True), Limits())

    assert [i.emergency for i in claim.items] == [True, True, True]


def test_item_emergency_flag_marks_only_that_item() -> None:
    claim = claim_from_request(request(line("1"), line("2", emergency=True), line("3")), Limits())

    assert [i.emergency for i in claim.items] == [False, True, False]


@pytest.mark.parametrize("code", ["009999", "D190", "DOC001", "D990105000001", "d110105000001", "医生甲"])
def test_malformed_practitioner_code_is_not_a_bad_request(code: str) -> None:
    claim = claim_from_request(request(line("1", bilg_dr_codg=code), line("2", orders_dr_code=code)), Limits())

    assert claim.items[0].practitioners == (code,)
    assert claim.items[1].practitioners == (DOCTOR, code)


def test_bounded_fields_at_their_maximum_are_accepted() -> None:
    at_most = request(
        line("1", bilg_dr_codg=" " + "D" * 32 + " ", med_list_codg="X" * 64, amount_fen=-(10**12)),
        mdtrt_id="M" * 64,
        med_type="1" * 64,
    )
    claim = claim_from_request(at_most, Limits())
    assert claim.items[0].practitioners == ("D" * 32,)  # decided malformed, not refused


def test_the_largest_claim_sums_fit_the_response() -> None:
    biggest = request(*(line(str(n), amount_fen=10**12) for n in range(defaults.MAX_ITEMS)))
    total = sum(item.amount_fen for item in claim_from_request(biggest, Limits(max_request_bytes=10**8)).items)
    assert pb.CheckClaimResponse(allowed_amount_fen=total).allowed_amount_fen == total


def test_an_institution_code_is_checked_alike_whether_seen_before_or_not() -> None:
    code = "H41130200746"
    assert institution_code(code) == code
    assert institution_code(code) == code  # remembered
    assert institution_code(f" {code} ") == code  # trimmed, as the first time
    with pytest.raises(InvalidArgument, match="fixmedins_code"):
        institution_code(code[:-1])
    with pytest.raises(InvalidArgument, match="is required"):
        institution_code("   ")
