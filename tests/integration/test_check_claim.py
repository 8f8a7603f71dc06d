"""CheckClaim and GetPractitioner over real gRPC against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gatekeeper.core.policy import parse_policy
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper, on_both_redis
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY, load, period, write_snapshot

pytestmark = on_both_redis  # the core cases run against one Redis and the Redis Cluster

ALLOW, EXEMPT, BLOCK = pb.VERDICT_ALLOW, pb.VERDICT_ALLOW_EXEMPT, pb.VERDICT_BLOCK


def demo_claim() -> pb.CheckClaimRequest:
    return json_format.ParseDict(json.loads(DEMO_CLAIM.read_text(encoding="utf-8")), pb.CheckClaimRequest())


def plain_claim() -> pb.CheckClaimRequest:
    """The demo claim's items 1 and 9 alone: billed by practitioners who have only ever been
    registered, a plain claim, parsed, decided and answered in C (core/native.py)."""
    claim = demo_claim()
    del claim.items[1:8]
    return claim


def wait_until_serving(target: str) -> None:
    """Block on the health Watch stream (the ready signal) until SERVING."""
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        for update in stream:
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                stream.cancel()
                return
    raise AssertionError("health never turned SERVING")


def test_demo_claim_is_decided_as_the_rules_say(gatekeeper: RunningGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    response = gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)

    decided = [(i.feedetl_sn, i.verdict, i.reason, i.prac_psn_code) for i in response.items]
    assert decided == [
        ("1", ALLOW, pb.REASON_OK, ""),
        ("2", BLOCK, pb.REASON_SUSPENDED, "D410102000002"),
        ("3", EXEMPT, pb.REASON_EMERGENCY_EXEMPT, "D410102000002"),
        ("4", BLOCK, pb.REASON_TERMINATED, "D410102000003"),
        ("5", BLOCK, pb.REASON_UNREGISTERED, "D110105999999"),
        ("6", BLOCK, pb.REASON_MALFORMED_CODE, "DOC001"),
        ("7", BLOCK, pb.REASON_TERMINATED, "D410102000003"),  # the executing doctor counts
        ("8", BLOCK, pb.REASON_UNREGISTERED, "D310101000007"),  # registration ended
        ("9", ALLOW, pb.REASON_OK, ""),  # a withdrawn suspension does not count
    ]
    assert response.verdict == pb.CLAIM_VERDICT_PARTIAL
    assert response.allowed_amount_fen == 2500 + 12000 + 1100
    assert response.blocked_amount_fen == 3850 + 6400 + 900 + 1500 + 4200 + 700
    assert response.registry_version == "demo-20261120@32"
    assert response.enforced and all(i.enforced for i in response.items)
    suspended = response.items[1]
    assert (suspended.begntime, suspended.endtime) == ("2026-10-01 00:00:00", "2027-01-01 00:00:00")
    assert "暂停" in suspended.chg_rea
    assert response.items[3].endtime == ""  # open-ended termination
    assert len(response.decision_id) == 32


def test_a_plain_claim_gets_the_same_answer_from_the_c_path_and_from_the_python(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis
) -> None:
    # The same claim demanding a registry version is left to the Python from its first byte.
    load(redis_client, DEMO_REGISTRY)
    plain = plain_claim()
    demanding = pb.CheckClaimRequest()
    demanding.CopyFrom(plain)
    demanding.min_registry_version = "demo-20261120@32"

    answers = [gatekeeper.stub.CheckClaim(request, timeout=5) for request in (plain, demanding)]
    assert answers[0].decision_id != answers[1].decision_id
    for answer in answers:
        answer.decision_id = ""
    assert answers[0] == answers[1]
    assert answers[0].verdict == pb.CLAIM_VERDICT_ALLOW
    assert [(i.feedetl_sn, i.verdict, i.reason, i.message) for i in answers[0].items] == [
        ("1", ALLOW, pb.REASON_OK, "审核通过"),
        ("9", ALLOW, pb.REASON_OK, "审核通过"),
    ]
    assert answers[0].allowed_amount_fen == 2500 + 1100


def test_with_the_c_path_off_every_claim_gets_the_answer_the_c_path_gives(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    # --no-c-path (GATEKEEPER_C_PATH=no): an operator's switch back to the Python, the reference.
    load(redis_client, DEMO_REGISTRY)
    plain = plain_claim()
    answers = []
    for c_path in (True, False):
        gatekeeper = start_gatekeeper(c_path=c_path)
        for request in (plain, demo_claim()):
            answer = gatekeeper.stub.CheckClaim(request, timeout=5)
            answer.decision_id = ""
            answers.append(answer)
    assert answers[:2] == answers[2:]
    assert answers[0].verdict == pb.CLAIM_VERDICT_ALLOW
    assert answers[1].verdict == pb.CLAIM_VERDICT_PARTIAL


def test_each_item_carries_the_words_for_the_cashier(gatekeeper: RunningGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    single = gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)
    batched = gatekeeper.stub.CheckClaims(pb.CheckClaimsRequest(claims=[demo_claim()]), timeout=5)

    assert single.items[1].message == (
        "开单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），本项目不予医保结算；急诊、抢救除外"
    )
    assert single.items[6].message == "受单医生 D410102000003 医保支付资格终止（2026-06-01 起），本项目不予医保结算"
    assert single.items[0].message == "审核通过"
    assert [i.message for i in batched.results[0].response.items] == [i.message for i in single.items]


def test_monitor_mode_region_blocks_nothing_but_keeps_reasons(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    policy = parse_policy({"regions": {"4101": {"mode": "monitor"}}})
    gatekeeper = start_gatekeeper(policy=policy)

    response = gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)

    assert response.verdict == pb.CLAIM_VERDICT_ALLOW
    assert response.blocked_amount_fen == 0
    assert not response.enforced
    assert [i.verdict for i in response.items].count(BLOCK) == 0
    assert response.items[1].reason == pb.REASON_SUSPENDED
    assert response.items[3].reason == pb.REASON_TERMINATED
    assert not any(i.enforced for i in response.items)
    assert response.items[1].message.startswith("【仅提示，照常结算】开单医生 D410102000002 医保支付资格暂停")


def test_region_policy_can_exempt_terminations_in_emergencies(
    start_gatekeeper: StartGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    request = demo_claim()
    request.emergency = True
    beijing_rules = parse_policy({"regions": {"41": {"emergency_exempts_termination": True}}})

    default = start_gatekeeper().stub.CheckClaim(request, timeout=5)
    beijing = start_gatekeeper(policy=beijing_rules).stub.CheckClaim(request, timeout=5)

    assert default.items[3].verdict == BLOCK
    assert beijing.items[3].verdict == EXEMPT
    assert beijing.items[3].reason == pb.REASON_EMERGENCY_EXEMPT
    # Unregistered and malformed codes are never exempt.
    assert beijing.items[4].verdict == BLOCK
    assert beijing.items[5].verdict == BLOCK


def test_inpatient_stay_spanning_a_suspension_settles_partially(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis, tmp_path: Path
) -> None:
    code = "D410102000123"
    load(
        redis_client,
        write_snapshot(
            tmp_path,
            [
                period(code, "r1", 1, "2020-01-01 00:00:00", seq=1),
                period(code, "s1", 2, "2026-11-10 00:00:00", "2026-12-10 00:00:00", seq=2, chg_rea="记分9分"),
            ],
        ),
    )
    days = ["2026-11-08 10:00:00", "2026-11-09 23:59:59", "2026-11-10 00:00:00", "2026-11-11 10:00:00"]
    request = pb.CheckClaimRequest(
        claim_id="IP-1",
        fixmedins_code="H41010200001",
        med_type="21",
        items=[
            pb.LineItem(feedetl_sn=str(n), fee_ocur_time=day, amount_fen=1000, bilg_dr_codg=code)
            for n, day in enumerate(days)
        ],
    )
    response = gatekeeper.stub.CheckClaim(request, timeout=5)
    assert [i.verdict for i in response.items] == [ALLOW, ALLOW, BLOCK, BLOCK]
    assert response.verdict == pb.CLAIM_VERDICT_PARTIAL
    assert (response.allowed_amount_fen, response.blocked_amount_fen) == (2000, 2000)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("claim_id"), "claim_id"),
        (lambda r: r.ClearField("items"), "items"),
        (lambda r: r.items.add().CopyFrom(r.items[0]), "items[9].feedetl_sn"),
        (lambda r: setattr(r.items[2], "fee_ocur_time", "2026/11/20 09:25"), "items[2].fee_ocur_time"),
        (lambda r: setattr(r, "fixmedins_code", "HOSPITAL-1"), "fixmedins_code"),
    ],
    ids=["missing_claim_id", "no_items", "duplicate_feedetl_sn", "unparsable_time", "bad_institution"],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis, mutate: object, field: str
) -> None:
    load(redis_client, DEMO_REGISTRY)
    request = demo_claim()
    mutate(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}:")


def test_limits_on_items_and_size(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper(max_items=5, max_request_bytes=2000, max_batch_bytes=2000)
    too_many = demo_claim()
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(too_many, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("items:")

    oversize = demo_claim()
    del oversize.items[5:]
    oversize.med_type = "x" * 3000
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(oversize, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("request:")

    beyond_transport = demo_claim()
    beyond_transport.med_type = "x" * 10_000
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(beyond_transport, timeout=5)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The server is still answering correctly afterwards.
    fine = demo_claim()
    del fine.items[5:]
    assert gatekeeper.stub.CheckClaim(fine, timeout=5).verdict == pb.CLAIM_VERDICT_PARTIAL


def test_without_a_snapshot_claims_are_unavailable_and_health_waits(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis
) -> None:
    health = health_pb2_grpc.HealthStub(gatekeeper.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(demo_claim(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no registry snapshot" in raised.value.details()

    load(redis_client, DEMO_REGISTRY)
    wait_until_serving(gatekeeper.target)
    service = health_pb2.HealthCheckRequest(service="gatekeeper.v1.Gatekeeper")
    assert health.Check(service, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert gatekeeper.stub.CheckClaim(demo_claim(), timeout=5).verdict == pb.CLAIM_VERDICT_PARTIAL


def test_get_practitioner_shows_current_and_upcoming_windows(
    gatekeeper: RunningGatekeeper, redis_client: redis.Redis
) -> None:
    load(redis_client, DEMO_REGISTRY)
    before = gatekeeper.stub.GetPractitioner(
        pb.GetPractitionerRequest(prac_psn_code="D120101000008", at_time="2026-11-20 08:00:00"), timeout=5
    )
    assert before.status == pb.PRACTITIONER_STATUS_REGISTERED
    assert before.may_bill and before.prac_psn_type == "1"
    assert [(w.status, w.begntime) for w in before.upcoming] == [
        (pb.PRACTITIONER_STATUS_SUSPENDED, "2026-12-01 00:00:00")
    ]
    during = gatekeeper.stub.GetPractitioner(
        pb.GetPractitionerRequest(prac_psn_code=" D120101000008 ", at_time="2026-12-01 00:00:00"), timeout=5
    )
    assert during.status == pb.PRACTITIONER_STATUS_SUSPENDED
    assert not during.may_bill and during.may_bill_emergency
    assert during.current.endtime == "2027-03-01 00:00:00"

    terminated = gatekeeper.stub.GetPractitioner(
        pb.GetPractitionerRequest(prac_psn_code="D410102000003", at_time="2026-11-20 08:00:00"), timeout=5
    )
    assert terminated.status == pb.PRACTITIONER_STATUS_TERMINATED
    assert not terminated.may_bill_emergency
    assert terminated.current.ban_endtime == "2029-06-01 00:00:00"

    malformed = gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="009999"), timeout=5)
    assert malformed.status == pb.PRACTITIONER_STATUS_MALFORMED
    unknown = gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="D110105999999"), timeout=5)
    assert unknown.status == pb.PRACTITIONER_STATUS_UNREGISTERED
    assert unknown.registry_version == "demo-20261120@32"

    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="D110105000001", at_time="now"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("at_time:")


def test_reflection_lists_the_services(gatekeeper: RunningGatekeeper) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gatekeeper.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"gatekeeper.v1.Gatekeeper", "grpc.health.v1.Health"} <= names
