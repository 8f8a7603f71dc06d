"""The JSON-over-HTTP door's pure parts: JSON to and from messages, errors naming the field, status mapping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatekeeper.api.http_json import HTTP_STATUS, PATHS, SERVICE, error_body
from gatekeeper.api.json_mapping import from_json, locate_problem, to_json
from gatekeeper.core import errors
from gatekeeper.core.errors import InvalidArgument
from gatekeeper.v1 import gatekeeper_pb2 as pb

ITEM = {"feedetl_sn": "1", "fee_ocur_time": "2026-11-20 10:00:00", "amount_fen": 100, "bilg_dr_codg": "D110105000001"}


def claim(**changes: Any) -> dict[str, Any]:
    return {"claim_id": "C1", "fixmedins_code": "H41130200746", "items": [dict(ITEM)], **changes}


@pytest.mark.parametrize(
    ("document", "where", "problem"),
    [
        (claim(itemz=[]), "itemz", "is not a field of gatekeeper.v1.CheckClaimRequest"),
        (claim(items=[ITEM, {**ITEM, "amount_fen": "lots"}]), "items[1].amount_fen", "expected an integer"),
        (claim(items=[{**ITEM, "amount_fen": 2**63}]), "items[0].amount_fen", "is outside"),
        (claim(items=[{**ITEM, "amount_fen": 1.5}]), "items[0].amount_fen", "expected an integer"),
        (claim(items=[{**ITEM, "emergency": "true"}]), "items[0].emergency", "expected true or false"),
        (claim(items=[{**ITEM, "feedetl_sn": 1}]), "items[0].feedetl_sn", "expected a string"),
        (claim(items={"feedetl_sn": "1"}), "items", "expected a JSON array"),
        (claim(items=["1"]), "items[0]", "expected a JSON object"),
    ],
    ids=[
        "unknown-field",
        "amount-text",
        "amount-beyond-int64",
        "amount-fraction",
        "bool-text",
        "string-number",
        "items-not-a-list",
        "item-not-an-object",
    ],
)
def test_a_bad_value_is_found_by_its_path(document: dict[str, Any], where: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        from_json(json.dumps(document).encode(), pb.CheckClaimRequest())

    assert raised.value.field == where
    assert problem in str(raised.value)
    assert locate_problem(document, pb.CheckClaimRequest.DESCRIPTOR) == (where, str(raised.value)[len(where) + 2 :])


def test_well_formed_values_are_not_problems() -> None:
    lenient = claim(items=[{**ITEM, "amount_fen": "100", "emergency": None}], emergency=True)
    camel = {"claimId": "C1", "fixmedinsCode": "H41130200746", "items": [{"amountFen": 5}]}

    assert locate_problem(lenient, pb.CheckClaimRequest.DESCRIPTOR) is None
    assert locate_problem(camel, pb.CheckClaimRequest.DESCRIPTOR) is None  # the proto3 JSON mapping allows both
    assert from_json(json.dumps(lenient).encode(), pb.CheckClaimRequest()).items[0].amount_fen == 100


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"{", "not JSON"), (b"\xff\xfe\x00", "not JSON"), (b"[]", "expected a JSON object, got list"), (b"7", "got int")],
    ids=["truncated", "not-utf8", "array", "number"],
)
def test_a_body_that_is_not_a_json_object_is_the_requests_fault(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        from_json(body, pb.CheckClaimRequest())

    assert raised.value.field == "request" and problem in str(raised.value)


def test_answers_carry_every_field_by_its_snake_case_name_and_amounts_as_numbers() -> None:
    response = pb.CheckClaimResponse(
        decision_id="d",
        verdict=pb.CLAIM_VERDICT_BLOCK,
        blocked_amount_fen=10**12,
        items=[pb.ItemDecision(feedetl_sn="1", reason=pb.REASON_SUSPENDED, chg_rea="暂停")],
    )

    answer = json.loads(to_json(response))

    assert answer["blocked_amount_fen"] == 10**12 and answer["allowed_amount_fen"] == 0
    assert answer["enforced"] is False  # a false field is present, not left out
    assert answer["items"][0]["reason"] == "REASON_SUSPENDED" and answer["items"][0]["endtime"] == ""
    assert "暂停".encode() in to_json(response)  # UTF-8, not \\u escapes
    assert set(answer) == {f.name for f in pb.CheckClaimResponse.DESCRIPTOR.fields}


def test_an_error_body_names_the_status_and_the_field() -> None:
    body = json.loads(error_body(400, "INVALID_ARGUMENT", "claim_id: is required", "claim_id"))

    assert body == {
        "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "claim_id: is required", "field": "claim_id"}
    }


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_every_expected_error_has_an_http_status() -> None:
    statuses = {error.status for error in _subclasses(errors.GatekeeperError)}

    assert statuses <= set(HTTP_STATUS)


def test_every_rpc_has_a_path() -> None:
    assert set(PATHS) == {method.name for method in SERVICE.methods}
