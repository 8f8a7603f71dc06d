"""Replica reads on the session's Redis Cluster: lookups go to the replica, and a change the
loader applies is seen all the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import load
from tests.integration.test_audit import wait_until
from tests.integration.test_degraded import COLD, claim, registry
from tests.integration.test_near_cache import suspend
from tests.servers import RedisCluster


def hmget_calls(port: int) -> int:
    with redis.Redis(port=port) as node:
        return int(node.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


@pytest.mark.parametrize("redis_server", ["cluster"], indirect=True)
def test_lookups_read_the_replica_and_a_change_is_seen_all_the_same(
    start_gatekeeper: StartGatekeeper, redis_server: RedisCluster, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    master = redis_server.master_of(keys.META)
    replica = redis_server.replica_of(master)
    gatekeeper = start_gatekeeper(redis_replica_reads=True)
    on_master, on_replica = hmget_calls(master.port), hmget_calls(replica.port)

    answer = gatekeeper.stub.CheckClaim(claim("r1", COLD[0]), timeout=5)
    assert [i.reason for i in answer.items] == [pb.REASON_OK, pb.REASON_SUSPENDED, pb.REASON_OK]
    assert hmget_calls(replica.port) > on_replica
    assert hmget_calls(master.port) == on_master  # the master only writes and notifies

    suspend(redis_client, 600, code=COLD[0])
    wait_until(
        lambda: gatekeeper.stub.CheckClaim(claim("r2", COLD[0]), timeout=5).items[2].reason == pb.REASON_SUSPENDED,
        "the change is seen through the replica",
    )
    # Never an older answer after that: nothing read from a replica that lagged was kept.
    later = [gatekeeper.stub.CheckClaim(claim(f"r3-{n}", COLD[0]), timeout=5).items[2].reason for n in range(20)]
    assert later == [pb.REASON_SUSPENDED] * 20
