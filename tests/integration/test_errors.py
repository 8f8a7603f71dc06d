"""Bugs surface as INTERNAL with no stack trace; the server keeps serving."""

from __future__ import annotations

from collections.abc import Collection

import grpc
import pytest

from gatekeeper.core.eligibility import Lookup
from gatekeeper.core.errors import CacheCorrupt
from gatekeeper.core.records import PractitionerRecord, StatusPeriod
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import StartGatekeeper
from tests.memory_store import MemoryEligibilityStore


class BrokenOnceStore(MemoryEligibilityStore):
    """Raises an unexpected error on the first lookup only."""

    def __init__(self) -> None:
        registered = PractitionerRecord(1, (StatusPeriod(status=1, begntime=0, chg_id="c1", seq=1),))
        super().__init__({"D110105000001": registered})
        self.failed = False

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        if not self.failed:
            self.failed = True
            raise KeyError("secret internal detail")
        return await super().lookup(codes, min_seq)


def test_an_unexpected_error_is_internal_without_details(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = start_gatekeeper(store=BrokenOnceStore())
    request = pb.CheckClaimRequest(
        claim_id="c",
        fixmedins_code="H11010500001",
        items=[pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg="D110105000001")],
    )
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in raised.value.details() and "Traceback" not in raised.value.details()
    assert "decision id" in raised.value.details()

    assert gatekeeper.stub.CheckClaim(request, timeout=5).verdict == pb.CLAIM_VERDICT_ALLOW


class CorruptStore(MemoryEligibilityStore):
    """A cache holding a record this version cannot read."""

    async def lookup(self, codes: Collection[str], min_seq: int = 0) -> Lookup:
        raise CacheCorrupt("undecodable record: secret bytes b'\\x93'")


def test_a_corrupt_cache_is_internal_with_a_decision_id_and_no_details(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = start_gatekeeper(store=CorruptStore({}))
    request = pb.CheckClaimRequest(
        claim_id="c",
        fixmedins_code="H11010500001",
        items=[pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-06-01 10:00:00", bilg_dr_codg="D110105000001")],
    )
    with pytest.raises(grpc.RpcError) as raised:
        gatekeeper.stub.CheckClaim(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "decision id" in raised.value.details()
    assert "secret" not in raised.value.details()
