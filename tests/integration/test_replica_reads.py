"""Replica reads on the session's Redis Cluster: lookups go to the replica, and a change the
loader applies is seen all the same."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gatekeeper.cache import keys
from gatekeeper.cache.store import LOOKUP_CLIENT_NAME
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import load
from tests.integration.test_audit import wait_until
from tests.integration.test_degraded import COLD, claim, registry
from tests.integration.test_near_cache import suspend
from tests.servers import RedisCluster

END_OF_WATCH = "end-of-watch"


@contextlib.contextmanager
def lookups_on(port: int) -> Iterator[list[str]]:
    """The HMGETs the node at ``port`` runs inside the block (by MONITOR), each named by the
    connection that sent it (its CLIENT SETNAME, else its address): other tests' servers,
    or this test's loader, may use the node meanwhile, and only the gatekeeper's count."""
    seen: list[tuple[str, str]] = []
    with redis.Redis(port=port, socket_timeout=10) as node, node.monitor() as monitor:

        def watch() -> None:
            while (command := monitor.next_command())["command"] != f"ECHO {END_OF_WATCH}":
                address = f"{command['client_address']}:{command['client_port']}"
                if command["command"].upper().startswith("HMGET "):
                    seen.append((address, command["command"]))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        names: list[str] = []
        yield names
        connections = {client["addr"]: client["name"] for client in node.client_list()}
        node.echo(END_OF_WATCH)
        watcher.join(timeout=10)
        assert not watcher.is_alive(), "MONITOR did not see the end of the watch"
        names.extend(connections.get(address) or address for address, _ in seen)


@pytest.mark.parametrize("redis_server", ["cluster"], indirect=True)
def test_lookups_read_the_replica_and_a_change_is_seen_all_the_same(
    start_gatekeeper: StartGatekeeper, redis_server: RedisCluster, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, registry(tmp_path))
    master = redis_server.master_of(keys.META)
    replica = redis_server.replica_of(master)
    gatekeeper = start_gatekeeper(redis_replica_reads=True)

    with lookups_on(master.port) as on_master, lookups_on(replica.port) as on_replica:
        answer = gatekeeper.stub.CheckClaim(claim("r1", COLD[0]), timeout=5)
    assert [i.reason for i in answer.items] == [pb.REASON_OK, pb.REASON_SUSPENDED, pb.REASON_OK]
    assert LOOKUP_CLIENT_NAME in on_replica
    assert LOOKUP_CLIENT_NAME not in on_master  # the master only writes and notifies

    suspend(redis_client, 600, code=COLD[0])
    wait_until(
        lambda: gatekeeper.stub.CheckClaim(claim("r2", COLD[0]), timeout=5).items[2].reason == pb.REASON_SUSPENDED,
        "the change is seen through the replica",
    )
    # Never an older answer after that: nothing read from a replica that lagged was kept.
    later = [gatekeeper.stub.CheckClaim(claim(f"r3-{n}", COLD[0]), timeout=5).items[2].reason for n in range(20)]
    assert later == [pb.REASON_SUSPENDED] * 20
