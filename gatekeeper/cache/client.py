"""Redis clients chosen by the URL alone: one Redis (``redis://``, ``rediss://``) or a Redis
Cluster (``redis+cluster://``, ``rediss+cluster://``, any node); every command bounded in
time, no hidden retries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import LoadBalancingStrategy, RedisCluster
from redis.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import MovedError, RedisClusterException, RedisError
from redis.retry import Retry

from gatekeeper.cache import keys
from gatekeeper.console import CommandFailed
from gatekeeper.urls import CLUSTER_SCHEMES, cluster_url, url_shown

# The cluster schemes and the one-Redis scheme each stands for.
# What a client raises when Redis cannot do a command: a cluster client that cannot learn the
# slot map from any node raises RedisClusterException, which is not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException)

# What a cluster client of the service is: its commands go to the node owning their slot.
AsyncClient = redis.asyncio.Redis | AsyncRedisCluster


def redis_client(
    url: str,
    timeout_seconds: float | None,
    read_timeout_seconds: float | None = None,
    *,
    replica_reads: bool = False,
    **options: Any,
) -> AsyncClient:
    """A client whose every command, connecting included, gives up after ``timeout_seconds``
    (reading after ``read_timeout_seconds`` when given: a blocking XREAD waits longer).

    No retries: redis-py retries a failed command three times by default, which would
    multiply the time a hung Redis holds a claim. The caller decides what a failure means.
    A cluster client learns the slot map from the node in the URL, sends a pipeline's
    commands to their nodes in one round trip each, and after a failed command relearns
    the map before its next one, so a promoted replica is found without a restart. With
    ``replica_reads`` its reads go to the replicas of their slot (in turn, when there are several).
    """
    read_timeout = timeout_seconds if read_timeout_seconds is None else read_timeout_seconds
    plain = cluster_url(url)
    if plain is None:
        return redis.asyncio.Redis.from_url(
            url,
            socket_timeout=read_timeout,
            socket_connect_timeout=timeout_seconds,
            retry=AsyncRetry(NoBackoff(), 0),
            **options,
        )
    return AsyncRedisCluster.from_url(
        plain,
        socket_timeout=read_timeout,
        socket_connect_timeout=timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 0),
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS if replica_reads else None,
        **options,
    )


def command_client(url: str) -> redis.Redis:
    """:func:`sync_client` for a command (nothing connects yet); a URL that is not a Redis
    URL is a usage error."""
    try:
        return sync_client(url)
    except (ValueError, redis.RedisClusterException) as error:
        schemes = ", ".join(f"{scheme}://" for scheme in CLUSTER_SCHEMES)
        message = f"--redis-url {url_shown(url)!r}: {error}; for a Redis Cluster: {schemes}"
        raise CommandFailed(message, exit_code=2) from None


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A client for the loader and the command line (nothing connects yet). For a cluster, a
    one-Redis client of the master that owns the cache's slot (every key is tagged ``{gk}``,
    docs/cache-layout.md): it asks the cluster which node that is whenever it opens a
    connection, so after a failover its next connection goes to the promoted replica, as
    redis-py's Sentinel pool does. The loader's pipelined Function calls and raw
    connections then work unchanged."""
    plain = cluster_url(url)
    if plain is None:
        return redis.Redis.from_url(url, **options)
    tls = urlsplit(plain).scheme == "rediss"
    owner = SlotOwner(plain, options)
    pool = redis.ConnectionPool.from_url(
        plain, connection_class=SlotOwnerSSLConnection if tls else SlotOwnerConnection, slot_owner=owner, **options
    )
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


class SlotOwner:
    """Finds the master serving the cache's slot, through a cluster client made on first use
    (redis-py's cluster client connects as it is made)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._cluster: RedisCluster | None = None
        self._moved_to: tuple[str, int] | None = None

    def moved(self, host: str, port: int) -> None:
        """A node answered MOVED: the slot's new master, for the next connection. Right after a
        failover a node's slot map may still name the old master; the MOVED reply does not."""
        self._moved_to = (host, port)

    def address(self) -> tuple[str, int]:
        """Host and port of that master: the one a MOVED reply named, else from a freshly read
        slot map; ConnectionError when no node answers or none serves the slot."""
        if self._moved_to is not None:
            address, self._moved_to = self._moved_to, None
            return address
        try:
            if self._cluster is None:
                self._cluster = RedisCluster.from_url(self._url, **self._options)
            else:
                self._cluster.nodes_manager.initialize()
        except redis.RedisClusterException as error:  # no startup node answered
            raise redis.ConnectionError(str(error)) from error
        node = self._cluster.get_node_from_key(keys.META)  # type: ignore[no-untyped-call]
        if node is None or node.host is None or node.port is None:
            raise redis.ConnectionError(f"no Redis Cluster node serves the slot of {keys.META}")
        return node.host, int(node.port)


class SlotOwnerMixin(AbstractConnection):
    """Connects to whichever node is the master of the cache's slot at that moment, as
    redis-py's SentinelManagedConnection connects to the master Sentinel names. A MOVED
    reply (the master was failed over and is now a replica) is a lost connection: it is
    closed, the command fails like one, and the next connection asks the cluster again."""

    slot_owner: SlotOwner

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None:
            self.host, self.port = self.slot_owner.address()
        super().connect_check_health(check_health, retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except MovedError as error:
            self.disconnect()  # type: ignore[no-untyped-call]
            self.slot_owner.moved(error.host, int(error.port))
            raise redis.ConnectionError(f"the cache's slot moved to another node ({error})") from error


class SlotOwnerConnection(SlotOwnerMixin, Connection):
    """A connection to the master of the cache's slot."""

    def __init__(self, *, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.slot_owner = slot_owner
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]


class SlotOwnerSSLConnection(SlotOwnerMixin, SSLConnection):
    """A TLS connection to the master of the cache's slot."""

    def __init__(self, *, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.slot_owner = slot_owner
        super().__init__(**kwargs)
