"""Overload, deadlines and malformed bytes against a real server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection

import grpc
import pytest
from prometheus_client import REGISTRY

from gatekeeper.core.eligibility import Lookup
from gatekeeper.core.records import PractitionerRecord, StatusPeriod
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import StartGatekeeper
from tests.memory_store import MemoryEligibilityStore

DOCTOR = "D110105000001"
REGISTERED = PractitionerRecord(1, (StatusPeriod(status=1, begntime=0, chg_id="c1", seq=1),))
WAIT_SECONDS = 10.0


def claim(claim_id: str = "c") -> pb.CheckClaimRequest:
    item = pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg=DOCTOR, amount_fen=100)
    return pb.CheckClaimRequest(claim_id=claim_id, fixmedins_code="H11010500001", items=[item])


class GatedStore(MemoryEligibilityStore):
    """Lookups wait until the test opens the gate; the test can see how many began."""

    def __init__(self) -> None:
        super().__init__({DOCTOR: REGISTERED})
        self.began = threading.Semaphore(0)
        self.lookups = 0
        self.gate = threading.Event()

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        self.lookups += 1
        self.began.release()
        while not self.gate.is_set():  # polls the test's condition; the test bounds the wait
            await asyncio.sleep(0.005)
        return await super().lookup(codes, min_seq)


def test_overload_is_refused_at_once_not_queued(start_gatekeeper: StartGatekeeper) -> None:
    store = GatedStore()
    gatekeeper = start_gatekeeper(store=store, max_concurrent_rpcs=2)
    calls = [gatekeeper.stub.CheckClaim.future(claim(f"c{n}"), timeout=WAIT_SECONDS) for n in range(6)]
    try:
        assert store.began.acquire(timeout=WAIT_SECONDS) and store.began.acquire(timeout=WAIT_SECONDS)
        # Answered while the two admitted calls still hold their slots: refused, not queued.
        deadline = time.monotonic() + WAIT_SECONDS
        while sum(call.done() for call in calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [call for call in calls if call.done()]
        assert len(refused) == 4
        assert {call.code() for call in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert store.lookups == 2
    finally:
        store.gate.set()
    admitted = [call for call in calls if call not in refused]
    assert [call.result(timeout=WAIT_SECONDS).verdict for call in admitted] == [pb.CLAIM_VERDICT_ALLOW] * 2
    assert gatekeeper.stub.CheckClaim(claim("after"), timeout=WAIT_SECONDS).verdict == pb.CLAIM_VERDICT_ALLOW


def refused(code: str, reason: str) -> float:
    """RPCs refused before any work (gatekeeper_rpc_refused_total) for CheckClaim, so far."""
    labels = {"method": "gatekeeper.v1.Gatekeeper/CheckClaim", "code": code, "reason": reason}
    return REGISTRY.get_sample_value("gatekeeper_rpc_refused_total", labels) or 0.0


class BlockingStore(MemoryEligibilityStore):
    """The first lookup blocks the server's whole event loop until released: a busy process."""

    def __init__(self) -> None:
        super().__init__({DOCTOR: REGISTERED})
        self.blocking = threading.Event()
        self.release = threading.Event()
        self.lookups = 0

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        self.lookups += 1
        if not self.blocking.is_set():
            self.blocking.set()
            self.release.wait(WAIT_SECONDS)  # deliberately blocking: nothing else runs meanwhile
        return await super().lookup(codes, min_seq)


def test_a_request_whose_deadline_passed_while_waiting_is_not_worked_on_and_is_counted(
    start_gatekeeper: StartGatekeeper,
) -> None:
    store = BlockingStore()
    gatekeeper = start_gatekeeper(store=store)
    before = refused("DEADLINE_EXCEEDED", "deadline_passed")
    first = gatekeeper.stub.CheckClaim.future(claim("first"), timeout=WAIT_SECONDS)
    assert store.blocking.wait(WAIT_SECONDS)
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(claim("late"), timeout=0.2)  # its deadline passes while the process is busy
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    store.release.set()
    assert first.result(timeout=WAIT_SECONDS).verdict == pb.CLAIM_VERDICT_ALLOW
    assert gatekeeper.stub.CheckClaim(claim("next"), timeout=WAIT_SECONDS).verdict == pb.CLAIM_VERDICT_ALLOW
    # The late request arrived before "next", so by now it has been dispatched or dropped:
    # it was never looked up (nor decided, nor audited). Only "first" and "next" were.
    assert store.lookups == 2
    assert refused("DEADLINE_EXCEEDED", "deadline_passed") == before + 1  # and it was counted


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        pytest.param("CheckClaim", b"\xff\xff\xff", id="corrupt_check_claim"),
        pytest.param("CheckClaims", b"\x0a\x05\x0a\x03", id="truncated_nested_message"),
        pytest.param("GetPractitioner", b"\x08", id="truncated_varint"),
    ],
)
def test_bytes_that_are_not_a_message_are_invalid_argument(
    start_gatekeeper: StartGatekeeper, method: str, payload: bytes
) -> None:
    gatekeeper = start_gatekeeper(store=MemoryEligibilityStore({DOCTOR: REGISTERED}))
    send = gatekeeper.channel.unary_unary(f"/gatekeeper.v1.Gatekeeper/{method}")
    with pytest.raises(grpc.RpcError) as raised:
        send(payload, timeout=WAIT_SECONDS)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("request: not a valid gatekeeper.v1.")
    assert gatekeeper.stub.CheckClaim(claim(), timeout=WAIT_SECONDS).verdict == pb.CLAIM_VERDICT_ALLOW


def test_an_overlong_practitioner_code_is_refused_by_get_practitioner(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = start_gatekeeper(store=MemoryEligibilityStore({DOCTOR: REGISTERED}))
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="D" * 1000), timeout=WAIT_SECONDS)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("prac_psn_code:")
