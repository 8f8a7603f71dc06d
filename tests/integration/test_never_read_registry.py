"""A gatekeeper that has never read a registry has nothing to stand in for: UNAVAILABLE."""

from __future__ import annotations

import grpc
import pytest

from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import StartGatekeeper
from tests.integration.test_hostile_callers import DOCTOR, claim
from tests.servers import free_port


@pytest.mark.parametrize("near_cache_entries", [pytest.param(1000, id="near_cache"), pytest.param(0, id="redis_only")])
def test_redis_unreachable_from_the_start_is_unavailable_not_unverified(
    start_gatekeeper: StartGatekeeper, near_cache_entries: int
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gatekeeper = start_gatekeeper(redis_url=nowhere, near_cache_entries=near_cache_entries, redis_timeout_seconds=0.2)
    for call in (
        lambda: gatekeeper.stub.CheckClaim(claim(), timeout=5),
        lambda: gatekeeper.stub.CheckClaims(pb.CheckClaimsRequest(claims=[claim()]), timeout=5),
        lambda: gatekeeper.stub.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code=DOCTOR), timeout=5),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no registry data" in raised.value.details()
