"""Fuzzing the real server over a real connection: generated requests and raw bytes never break it."""

from __future__ import annotations

import grpc
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_check_claim import demo_claim

# Bounded for CI: a few hundred calls of a millisecond or two each.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TIMEOUT = 5.0
# Statuses a well-behaved server may answer a strange request with. INTERNAL (a bug) and
# UNKNOWN (an exception gRPC caught for us) are not among them.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,  # a min_registry_version newer than the cache
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Protobuf strings are UTF-8: no lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
long_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=60, max_size=200)
codes = st.one_of(
    text,
    long_text,
    st.from_regex(r"(D|N|Y|J|HY|HJ)(1[1-5]|3[1-7]|4[1-6])[0-9]{10,11}", fullmatch=True),
    st.sampled_from(["D410102000002", "D410102000003", "D110105999999", "DOC001", " D110105000001 ", ""]),
)
times = st.one_of(
    text,
    st.sampled_from(["2026-11-20 10:00:00", "2026-10-01 00:00:00", "1970-01-01 08:00:00", "9999-12-31 23:59:59"]),
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")),
)
amounts = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(10**6), 10**6))
wild_lines = st.builds(
    pb.LineItem,
    feedetl_sn=st.one_of(text, st.integers(0, 30).map(str)),
    fee_ocur_time=times,
    med_list_codg=st.one_of(text, long_text),
    amount_fen=amounts,
    bilg_dr_codg=codes,
    orders_dr_code=codes,
    emergency=st.booleans(),
)
well_formed_codes = st.one_of(
    st.from_regex(r"(D|N|Y|J|HY|HJ)(1[1-5]|3[1-7]|4[1-6])[0-9]{10,11}", fullmatch=True),
    st.sampled_from(["D410102000002", "D410102000003", "D110105999999", "DOC001", ""]),
)
# Lines an HIS might really send: they get past validation, so the rules and the response
# are fuzzed too (amounts at the edges of int64 included).
plausible_lines = st.builds(
    pb.LineItem,
    fee_ocur_time=st.sampled_from(["2026-11-20 10:00:00", "2026-10-01 00:00:00", "1970-01-01 08:00:00"]),
    med_list_codg=text,
    amount_fen=amounts,
    bilg_dr_codg=well_formed_codes,
    orders_dr_code=well_formed_codes,
    emergency=st.booleans(),
)
lines = st.one_of(plausible_lines, wild_lines)
ids = st.from_regex(r"[A-Z0-9-]{1,30}", fullmatch=True)


@st.composite
def requests(draw: st.DrawFn) -> pb.CheckClaimRequest:
    """Claims an HIS might send (half of them: they get past validation, so the rules and
    the response are fuzzed too) and anything at all."""
    if draw(st.booleans()):
        items = draw(st.lists(plausible_lines, min_size=1, max_size=12))
        for n, item in enumerate(items):
            item.feedetl_sn = str(n + 1)
        return pb.CheckClaimRequest(
            claim_id=draw(ids),
            fixmedins_code=draw(st.sampled_from(["H41130200746", "H11010500001", "P33052200672"])),
            med_type=draw(text),
            emergency=draw(st.booleans()),
            items=items,
            min_registry_version=draw(st.sampled_from(["", "demo-20261120@1", "demo-20261120@999"])),
        )
    return pb.CheckClaimRequest(
        claim_id=draw(st.one_of(ids, text, long_text)),
        fixmedins_code=draw(st.one_of(text, st.sampled_from(["H41130200746", "H11010500001"]))),
        med_type=draw(st.one_of(text, long_text)),
        emergency=draw(st.booleans()),
        items=draw(st.lists(lines, max_size=12)),
        mdtrt_id=draw(st.one_of(text, long_text)),
        min_registry_version=draw(st.one_of(text, st.integers(0, 100).map(lambda n: f"demo-20261120@{n}"))),
    )


METHODS = ["CheckClaim", "CheckClaims", "GetPractitioner"]


def code_of(call: object) -> grpc.StatusCode:
    """The status of a finished call, whether it answered or failed."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def still_correct(gatekeeper: RunningGatekeeper) -> None:
    response = gatekeeper.stub.CheckClaim(demo_claim(), timeout=TIMEOUT)
    assert [i.reason for i in response.items] == [
        pb.REASON_OK,
        pb.REASON_SUSPENDED,
        pb.REASON_EMERGENCY_EXEMPT,
        pb.REASON_TERMINATED,
        pb.REASON_UNREGISTERED,
        pb.REASON_MALFORMED_CODE,
        pb.REASON_TERMINATED,
        pb.REASON_UNREGISTERED,
        pb.REASON_OK,
    ]


def test_generated_requests_always_get_a_status(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()

    @FUZZ
    @given(request=requests())
    def check(request: pb.CheckClaimRequest) -> None:
        status = code_of(lambda: gatekeeper.stub.CheckClaim(request, timeout=TIMEOUT))
        assert status in EXPECTED, request
        batch = pb.CheckClaimsRequest(claims=[request, request])
        assert code_of(lambda: gatekeeper.stub.CheckClaims(batch, timeout=TIMEOUT)) in EXPECTED, request

    check()
    still_correct(gatekeeper)


def test_raw_bytes_always_get_a_status(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> None:
    load(redis_client, DEMO_REGISTRY)
    gatekeeper = start_gatekeeper()
    senders = {m: gatekeeper.channel.unary_unary(f"/gatekeeper.v1.Gatekeeper/{m}") for m in METHODS}

    @FUZZ
    @given(method=st.sampled_from(METHODS), payload=st.binary(max_size=512))
    def check(method: str, payload: bytes) -> None:
        assert code_of(lambda: senders[method](payload, timeout=TIMEOUT)) in EXPECTED, payload

    check()
    still_correct(gatekeeper)
