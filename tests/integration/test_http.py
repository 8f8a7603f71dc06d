"""The JSON-over-HTTP door, called with a plain HTTP client (urllib) against a real server."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import json_format
from prometheus_client import REGISTRY

from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.certs import Issued
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper, exchange
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY, load
from tests.integration.test_audit import audited, wait_until
from tests.integration.test_check_claim import demo_claim
from tests.integration.test_mtls import Pki, pki  # noqa: F401 - pki is a fixture

JSON = {"Content-Type": "application/json"}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: Message  # case-insensitive


def post(
    url: str,
    body: object,
    *,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=data, headers=headers or JSON, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return Reply(response.status, json.loads(response.read()), response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, json.loads(error.read()), error.headers)


def url(gatekeeper: RunningGatekeeper, path: str) -> str:
    return f"http://127.0.0.1:{gatekeeper.http_port}{path}"


@pytest.fixture
def door(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> RunningGatekeeper:
    load(redis_client, DEMO_REGISTRY)
    return start_gatekeeper(http_listen="127.0.0.1:0", max_request_bytes=64 * 1024, request_read_seconds=0.5)


def one_item_claim(claim_id: str, code: str) -> dict[str, Any]:
    item = {"feedetl_sn": "1", "fee_ocur_time": "2026-11-20 10:00:00", "amount_fen": 100, "bilg_dr_codg": code}
    return {"claim_id": claim_id, "fixmedins_code": "H41130200746", "items": [item]}


def test_the_demo_claim_over_http_is_decided_as_over_grpc(door: RunningGatekeeper) -> None:
    over_http = post(url(door, "/v1/claims:check"), json.loads(DEMO_CLAIM.read_text(encoding="utf-8")))
    over_grpc = door.stub.CheckClaim(demo_claim(), timeout=5)

    assert over_http.status == 200
    assert over_http.headers["Content-Type"] == "application/json; charset=utf-8"
    expected = json_format.MessageToDict(
        over_grpc, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    for answer in (over_http.body, expected):
        del answer["decision_id"]
        answer["allowed_amount_fen"] = int(answer["allowed_amount_fen"])
        answer["blocked_amount_fen"] = int(answer["blocked_amount_fen"])
        for item in answer["items"]:
            item["amount_fen"] = int(item["amount_fen"])
    assert over_http.body == expected
    assert over_http.body["verdict"] == "CLAIM_VERDICT_PARTIAL"
    # Every field is there, a false one too, under its snake_case name; amounts are numbers.
    ok_item = over_http.body["items"][0]
    assert ok_item["reason"] == "REASON_OK" and ok_item["begntime"] == "" and ok_item["enforced"] is True
    assert "暂停" in over_http.body["items"][1]["chg_rea"]


def test_an_allowed_and_a_blocked_claim(door: RunningGatekeeper) -> None:
    allowed = post(url(door, "/v1/claims:check"), one_item_claim("ok", "D110105000001"))
    blocked = post(url(door, "/v1/claims:check"), one_item_claim("barred", "D410102000003"))

    assert (allowed.status, allowed.body["verdict"]) == (200, "CLAIM_VERDICT_ALLOW")
    assert (blocked.status, blocked.body["verdict"]) == (200, "CLAIM_VERDICT_BLOCK")
    assert blocked.body["items"][0]["reason"] == "REASON_TERMINATED"
    assert blocked.body["blocked_amount_fen"] == 100 and blocked.body["allowed_amount_fen"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["items"][0].update(fee_ocur_time="2026-11-20"), "items[0].fee_ocur_time"),
        (lambda c: c.update(fixmedins_code="X1"), "fixmedins_code"),
        (lambda c: c["items"][0].update(amount_fen="a lot"), "items[0].amount_fen"),
        (lambda c: c["items"][0].update(emergency="yes"), "items[0].emergency"),
        (lambda c: c.update(items=[c["items"][0], {**c["items"][0], "nurse": "N1"}]), "items[1].nurse"),
        (lambda c: c.update(claim_id=""), "claim_id"),
    ],
    ids=["time", "institution", "amount-not-a-number", "bool-as-text", "unknown-field", "missing-claim-id"],
)
def test_a_bad_field_is_400_naming_it_and_the_status(door: RunningGatekeeper, change: Any, field: str) -> None:
    claim = one_item_claim("C1", "D110105000001")
    change(claim)

    reply = post(url(door, "/v1/claims:check"), claim)

    assert reply.status == 400
    error = reply.body["error"]
    assert (error["code"], error["status"], error["field"]) == (400, "INVALID_ARGUMENT", field)
    assert error["message"].startswith(f"{field}: ")


def test_a_decision_over_http_is_recorded(door: RunningGatekeeper, database_url: str) -> None:
    reply = post(url(door, "/v1/claims:check"), one_item_claim("recorded", "D410102000002"))
    decision_id = reply.body["decision_id"]

    wait_until(lambda: any(r.decision_id == decision_id for r in audited(database_url)), "the decision is recorded")
    (record,) = [r for r in audited(database_url) if r.decision_id == decision_id]
    assert (record.claim_id, record.verdict) == ("recorded", "BLOCK")
    assert [(i.reason, i.bilg_dr_codg) for i in record.items] == [("SUSPENDED", "D410102000002")]


def test_a_batch_and_a_practitioner(door: RunningGatekeeper) -> None:
    batch = {"claims": [one_item_claim("a", "D110105000001"), one_item_claim("", "D110105000001")]}
    checked = post(url(door, "/v1/claims:checkBatch"), batch)
    practitioner = post(
        url(door, "/v1/practitioners:get"), {"prac_psn_code": "D410102000002", "at_time": "2026-11-20 10:00:00"}
    )

    assert checked.status == 200
    good, bad = checked.body["results"]
    assert good["response"]["verdict"] == "CLAIM_VERDICT_ALLOW" and "error" not in good
    assert bad["error"]["code"] == 3 and bad["error"]["message"].startswith("claim_id: ")
    assert practitioner.status == 200
    assert practitioner.body["status"] == "PRACTITIONER_STATUS_SUSPENDED"
    assert practitioner.body["may_bill"] is False and practitioner.body["may_bill_emergency"] is True


def test_an_oversized_body_is_refused_unread(door: RunningGatekeeper) -> None:
    claim = one_item_claim("big", "D110105000001")
    claim["items"] = [{**claim["items"][0], "feedetl_sn": str(n)} for n in range(1000)]  # ~100 KB > 64 KiB

    reply = post(url(door, "/v1/claims:check"), claim)

    assert reply.status == 413
    assert reply.body["error"]["status"] == "INVALID_ARGUMENT" and reply.body["error"]["field"] == "request"
    assert "more than the maximum of 65536" in reply.body["error"]["message"]


def test_not_a_route_a_method_or_a_media_type(door: RunningGatekeeper) -> None:
    claim = one_item_claim("C1", "D110105000001")
    assert post(url(door, "/v1/claims"), claim).status == 404
    wrong_method = post(url(door, "/v1/claims:check"), claim, method="PUT")
    assert (wrong_method.status, wrong_method.headers["Allow"]) == (405, "POST")
    assert post(url(door, "/v1/claims:check"), claim, headers={"Content-Type": "text/plain"}).status == 415
    assert post(url(door, "/v1/claims:check"), b"{not json").body["error"]["field"] == "request"
    assert post(url(door, "/v1/claims:check"), b"[1]").status == 400


def test_health_answers_get(door: RunningGatekeeper) -> None:
    def health() -> int:
        try:
            with urllib.request.urlopen(url(door, "/v1/health"), timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            return error.code

    wait_until(lambda: health() == 200, "the HTTP health check answers 200")


def test_a_health_check_with_a_body_is_refused_with_an_answer(door: RunningGatekeeper) -> None:
    assert door.http_port is not None
    request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    answer = exchange(door.http_port, request)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"field":"request"' in answer or b'"status":"INVALID_ARGUMENT"' in answer


def test_a_request_not_received_in_time_is_408_and_closed(door: RunningGatekeeper) -> None:
    assert door.http_port is not None
    head = b"POST /v1/claims:check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"

    counted = refused("request_read_timeout", "DEADLINE_EXCEEDED")

    answer = exchange(door.http_port, head + b'{"claim_id":')  # and then nothing: 0.5 s allowed

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"not received in full within 0.5 s" in answer and b"connection: close" in answer.lower()
    assert refused("request_read_timeout", "DEADLINE_EXCEEDED") == counted + 1


def refused(reason: str, code: str, path: str = "/v1/claims:check") -> float:
    """Requests refused before any work, as metrics count them (the server runs in this process)."""
    labels = {"method": f"POST {path}", "code": code, "reason": reason}
    return REGISTRY.get_sample_value("gatekeeper_rpc_refused_total", labels) or 0.0


def test_a_deadline_already_passed_is_not_worked_on(door: RunningGatekeeper, database_url: str) -> None:
    counted = refused("deadline_passed", "DEADLINE_EXCEEDED")
    headers = {**JSON, "X-Server-Timeout": "0.000001"}
    late = post(url(door, "/v1/claims:check"), one_item_claim("late", "D110105000001"), headers=headers)
    bad = post(
        url(door, "/v1/claims:check"),
        one_item_claim("C1", "D110105000001"),
        headers={**JSON, "X-Server-Timeout": "soon"},
    )

    assert (late.status, late.body["error"]["status"]) == (504, "DEADLINE_EXCEEDED")
    assert refused("deadline_passed", "DEADLINE_EXCEEDED") == counted + 1
    assert (bad.status, bad.body["error"]["field"]) == (400, "X-Server-Timeout")


def test_keep_alive_serves_requests_in_turn_on_one_connection(door: RunningGatekeeper) -> None:
    assert door.http_port is not None
    body = json.dumps(one_item_claim("C1", "D110105000001")).encode()
    request = b"POST /v1/claims:check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    last = request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")

    answer = exchange(door.http_port, request + request + last)  # pipelined

    assert answer.count(b"HTTP/1.1 200 OK") == 3


def tls_context(keys: Pki, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=keys.server_ca.cert_pem.decode())
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    return context


def claim_for(institution: str) -> dict[str, Any]:
    claim = json.loads(DEMO_CLAIM.read_text(encoding="utf-8"))
    claim["fixmedins_code"] = institution
    return claim


def test_mutual_tls_binds_the_caller_to_its_institutions(pki: Pki) -> None:  # noqa: F811 - the fixture
    check = f"https://127.0.0.1:{pki.http_port}/v1/claims:check"

    own = post(check, claim_for("H41010200001"), context=tls_context(pki, pki.hospital_a))
    other = post(check, claim_for("H41010200001"), context=tls_context(pki, pki.hospital_b))
    batch = post(
        f"https://127.0.0.1:{pki.http_port}/v1/claims:checkBatch",
        {"claims": [claim_for("H41010599999"), claim_for("H41130200746")]},
        context=tls_context(pki, pki.platform),
    )

    assert (own.status, own.body["verdict"]) == (200, "CLAIM_VERDICT_PARTIAL")
    assert (other.status, other.body["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert "CN=his.hospital-b.example" in other.body["error"]["message"]
    assert "H41010200001" in other.body["error"]["message"]
    inside, outside = batch.body["results"]
    assert inside["response"]["verdict"] == "CLAIM_VERDICT_PARTIAL"
    assert outside["error"]["code"] == 7 and "H41130200746" in outside["error"]["message"]


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_without_a_certificate_of_the_client_ca_no_request_is_heard(
    pki: Pki,  # noqa: F811 - the fixture
    client: str,
) -> None:
    context = tls_context(pki, None if client == "none" else pki.stranger)
    check = f"https://127.0.0.1:{pki.http_port}/v1/claims:check"

    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        post(check, claim_for("H41010200001"), context=context)


def test_a_certificate_with_a_nul_in_its_name_is_401(pki: Pki) -> None:  # noqa: F811 - the fixture
    forged = pki.client_ca.issue("his.hospital-a.example\0.evil")
    check = f"https://127.0.0.1:{pki.http_port}/v1/claims:check"

    reply = post(check, claim_for("H41010200001"), context=tls_context(pki, forged))

    assert (reply.status, reply.body["error"]["status"]) == (401, "UNAUTHENTICATED")


def test_http_and_grpc_share_the_workers_slots(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(http_listen="127.0.0.1:0", max_concurrent_rpcs=1, request_read_seconds=5)
    assert gatekeeper.http_port is not None
    claim = one_item_claim("C1", "D110105000001")
    head = b"POST /v1/claims:check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"

    with socket.create_connection(("127.0.0.1", gatekeeper.http_port), timeout=10) as holder:
        holder.sendall(head + b"{")  # admitted, its body still to come: it holds the one slot
        wait_until(lambda: post(url(gatekeeper, "/v1/claims:check"), claim).status == 429, "HTTP is refused")
        refused = post(url(gatekeeper, "/v1/claims:check"), claim)
        with pytest.raises(grpc.RpcError) as over_grpc:
            gatekeeper.stub.CheckClaim(json_format.ParseDict(claim, pb.CheckClaimRequest()), timeout=5)

    assert (refused.body["error"]["status"], refused.headers["Retry-After"]) == ("RESOURCE_EXHAUSTED", "1")
    assert over_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    wait_until(lambda: post(url(gatekeeper, "/v1/claims:check"), claim).status == 200, "the slot is free again")


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(door: RunningGatekeeper) -> None:
    assert door.http_port is not None
    body = json.dumps(one_item_claim("C1", "D110105000001")).encode()
    head = b"POST /v1/claims:check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    head += b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)

    with socket.create_connection(("127.0.0.1", door.http_port), timeout=10) as connection:
        connection.sendall(head)
        interim = connection.recv(65536)
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk

    assert interim.startswith(b"HTTP/1.1 100 ")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"CLAIM_VERDICT_ALLOW" in answer


def test_a_chunked_body_is_refused_once_it_passes_the_limit(door: RunningGatekeeper) -> None:
    assert door.http_port is not None
    head = b"POST /v1/claims:check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b" " * 60_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2))  # 120,000 > 64 KiB, never ended

    answer = exchange(door.http_port, head + chunks)

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"more than the maximum of 65536" in answer and b"connection: close" in answer.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"POST /v1/claims:check HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n",
    ],
    ids=["not-http", "head-over-16KiB"],
)
def test_what_is_not_http_1_1_is_400_and_closed(door: RunningGatekeeper, request_bytes: bytes) -> None:
    assert door.http_port is not None

    answer = exchange(door.http_port, request_bytes)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"field":"request"' in answer and b"connection: close" in answer.lower()
