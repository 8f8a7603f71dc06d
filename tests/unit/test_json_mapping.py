"""The API's JSON mapping takes a shorter road than json_format, and arrives at the same place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from gatekeeper.api.json_mapping import from_json, message_to_dict, parse_dict
from gatekeeper.core.errors import InvalidArgument
from gatekeeper.v1 import gatekeeper_pb2 as pb

DEMO_CLAIM = Path(__file__).resolve().parents[2] / "demo" / "claim.json"
ITEM = {"feedetl_sn": "1", "fee_ocur_time": "2026-11-20 10:00:00", "amount_fen": 100, "bilg_dr_codg": "D110105000001"}
WINDOW = pb.StatusWindow(status=pb.PRACTITIONER_STATUS_SUSPENDED, begntime="2026-10-01 00:00:00", chg_rea="暂停")
DECIDED = pb.CheckClaimResponse(
    decision_id="d",
    registry_version="demo@32",
    verdict=pb.CLAIM_VERDICT_PARTIAL,
    allowed_amount_fen=-25,
    blocked_amount_fen=5 * 10**15,
    enforced=True,
    items=[pb.ItemDecision(feedetl_sn="1", verdict=pb.VERDICT_BLOCK, reason=pb.REASON_SUSPENDED, chg_rea="暂停")],
)

ANSWERS: list[Message] = [
    pb.CheckClaimResponse(),
    DECIDED,
    pb.CheckClaimResponse(items=[pb.ItemDecision(reason=99)]),  # a number this build has no name for
    pb.CheckClaimResponse(blocked_amount_fen=2**60),  # beyond 2**53: json_format's own road
    pb.CheckClaimsResponse(
        results=[
            pb.ClaimResult(claim_id="a", response=DECIDED),
            pb.ClaimResult(claim_id="b", error=pb.ClaimError(code=3, message="claim_id: is required")),
            pb.ClaimResult(),
        ]
    ),
    pb.GetPractitionerResponse(prac_psn_code="D1", may_bill_emergency=True, current=WINDOW, upcoming=[WINDOW]),
    pb.GetPractitionerResponse(prac_psn_code="D1"),  # no current window: left out, as json_format does
]


@pytest.mark.parametrize("answer", ANSWERS, ids=range(len(ANSWERS)))
def test_answers_are_what_json_format_writes(answer: Message) -> None:
    expected = json_format.MessageToDict(
        answer,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )

    assert message_to_dict(answer) == expected


REQUESTS: list[tuple[type[Message], dict[str, Any]]] = [
    (pb.CheckClaimRequest, json.loads(DEMO_CLAIM.read_text(encoding="utf-8"))),  # amounts as strings
    (pb.CheckClaimRequest, {"claim_id": "C1", "emergency": True, "items": [ITEM, {**ITEM, "emergency": None}]}),
    (pb.CheckClaimRequest, {"claimId": "C1", "items": [{"amountFen": 5, "bilgDrCodg": "D1"}]}),  # lowerCamelCase
    (pb.CheckClaimRequest, {"claim_id": None, "items": None}),
    (pb.CheckClaimRequest, {"items": [{**ITEM, "amount_fen": 1e3}]}),
    (pb.CheckClaimsRequest, {"claims": [{"claim_id": "a", "items": [ITEM]}], "min_registry_version": "x@1"}),
    (pb.GetPractitionerRequest, {"prac_psn_code": "D410102000002", "at_time": "2026-11-20 10:00:00"}),
]


@pytest.mark.parametrize(("request_type", "document"), REQUESTS, ids=range(len(REQUESTS)))
def test_requests_are_read_as_json_format_reads_them(request_type: type[Message], document: dict[str, Any]) -> None:
    assert parse_dict(document, request_type()) == json_format.ParseDict(document, request_type())


BAD_REQUESTS: list[dict[str, Any]] = [
    {"emergency": 1},  # a message's constructor would take it
    {"items": [{**ITEM, "emergency": 0}]},
    {"items": {}},  # the constructor would take it as no items
    {"items": [None]},
    {"items": [{**ITEM, "amount_fen": True}]},
    {"items": [{**ITEM, "amount_fen": 2**63}]},
    {"claim_id": 7},
    {"claim_id": "C1", "nurse": "N1"},
]


@pytest.mark.parametrize("document", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_requests_json_format_refuses_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(document, pb.CheckClaimRequest())
    with pytest.raises(InvalidArgument):
        parse_dict(document, pb.CheckClaimRequest())


def test_a_body_is_read_into_the_message_given() -> None:
    message = from_json(json.dumps({"claim_id": "C1", "items": [ITEM]}).encode(), pb.CheckClaimRequest())

    assert message == pb.CheckClaimRequest(claim_id="C1", items=[pb.LineItem(**ITEM)])
