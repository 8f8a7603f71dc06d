"""The Redis URL alone chooses one Redis or a Redis Cluster; nothing connects until a command runs."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from gatekeeper.cache.client import SlotOwner, redis_client
from gatekeeper.cache.store import RedisEligibilityStore
from gatekeeper.core.errors import CacheUnavailable
from gatekeeper.urls import cluster_url
from tests.servers import free_port


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("redis://127.0.0.1:6379/0", None),
        ("rediss://cache:6380/0", None),
        ("redis+cluster://10.0.0.1:7000", "redis://10.0.0.1:7000"),
        ("rediss+cluster://reader:secret@10.0.0.1:7000", "rediss://reader:secret@10.0.0.1:7000"),
        ("REDIS+CLUSTER://10.0.0.1:7000", "redis://10.0.0.1:7000"),
    ],
)
def test_a_cluster_url_is_the_plain_url_with_cluster_in_its_scheme(url: str, plain: str | None) -> None:
    assert cluster_url(url) == plain


def test_the_service_gets_a_cluster_client_for_a_cluster_url() -> None:
    async def clients() -> tuple[object, object]:
        cluster = redis_client("redis+cluster://127.0.0.1:7000", 0.5)
        single = redis_client("redis://127.0.0.1:6379/0", 0.5)
        return cluster, single

    cluster, single = asyncio.run(clients())
    assert isinstance(cluster, AsyncRedisCluster)
    assert isinstance(single, redis.asyncio.Redis)


def test_a_redis_cluster_nobody_answers_for_is_an_unavailable_cache_not_a_crash() -> None:
    # Learning the slot map from no node raises RedisClusterException, which is no RedisError.
    async def scenario() -> None:
        store = RedisEligibilityStore.from_url(f"redis+cluster://127.0.0.1:{free_port()}", timeout_seconds=0.5)
        try:
            with pytest.raises(CacheUnavailable):
                await store.lookup(["D110105000001"])
            with pytest.raises(CacheUnavailable):
                await store.registry_updated_at()
        finally:
            await store.close()

    asyncio.run(scenario())


def test_after_a_moved_reply_the_next_connection_goes_where_it_said() -> None:
    # Right after a failover a node's slot map may still name the old master; the MOVED reply
    # is the node's own word that the slot moved, so the next connection goes there first.

    owner = SlotOwner(f"redis://127.0.0.1:{free_port()}", {})  # no cluster there: nothing is asked
    owner.moved("127.0.0.1", 42735)
    assert owner.address() == ("127.0.0.1", 42735)
    with pytest.raises(redis.ConnectionError):  # then the slot map again, from the cluster
        owner.address()
