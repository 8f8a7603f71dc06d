"""Fixtures that start real parts: a private redis-server, a private PostgreSQL, a gatekeeper gRPC server."""

from __future__ import annotations

import asyncio
import queue
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import psycopg
import pytest
import redis

from gatekeeper.audit.database import migrate
from gatekeeper.core.eligibility import EligibilityStore
from gatekeeper.core.policy import Policy
from gatekeeper.server import GatekeeperServer, create_server
from gatekeeper.settings import Settings
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.servers import PostgresServer, RedisCluster, RedisServer, start_cluster, start_postgres, start_redis

TEMPLATE = "gk_template"  # a migrated database each test's database is copied from


@pytest.fixture(autouse=True)
def no_demo_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands run by tests never read the addresses of a scripts/demo a developer has running."""
    monkeypatch.setenv("GATEKEEPER_DEMO_STATE", str(tmp_path_factory.getbasetemp() / "no-demo" / "state.json"))


@pytest.fixture(scope="session")
def single_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's one Redis."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The session's Redis Cluster: six nodes, three masters with a replica each. Tests may
    fail its masters over; they leave it healthy (RedisCluster.wait_healthy)."""
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="gk-cluster-")))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The Redis tests run against: the session's one Redis, or with ``@on_both_redis`` (an
    indirect parameter ``"cluster"``) the session's Redis Cluster."""
    if getattr(request, "param", "single") == "cluster":
        return cast(RedisCluster, request.getfixturevalue("redis_cluster"))
    return cast(RedisServer, request.getfixturevalue("single_redis"))


# Runs a test (or, as a module's pytestmark, every test of the module) against one Redis
# and against the Redis Cluster: the redis_server and redis_client fixtures follow.
on_both_redis = pytest.mark.parametrize("redis_server", ["single", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session (its own port and directory)."""
    server = start_postgres()
    with psycopg.connect(server.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(server.url(TEMPLATE), autocommit=True) as connection:
        migrate(connection)
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database of the decision record for one test, dropped afterwards."""
    name = f"gk_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def redis_client(redis_server: RedisServer | RedisCluster) -> Iterator[redis.Redis]:
    """A client of the test's Redis (for a cluster, of the master owning the cache's slot), emptied."""
    redis_server.flushall()
    client = redis_server.client()
    yield client
    client.close()


class ServerThread:
    """A gatekeeper server on its own event loop in a background thread."""

    def __init__(self, settings: Settings, store: EligibilityStore | None, policy: Policy | None) -> None:
        self._args = (settings, store, policy)
        self._ready: queue.Queue[int | BaseException] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._server: GatekeeperServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        try:
            self._stop = asyncio.Event()
            self._server = await create_server(*self._args)
            await self._server.start()
        except BaseException as error:
            self._ready.put(error)
            raise
        endpoint = self._server.metrics_endpoint
        self.metrics_port = endpoint.port if endpoint is not None else None
        self.http_port = self._server.http.port if self._server.http is not None else None
        self._ready.put(self._server.port)
        await self._stop.wait()
        await self._server.stop(grace=1)

    def start(self) -> int:
        self._thread.start()
        ready = self._ready.get(timeout=30)
        if isinstance(ready, BaseException):
            raise ready
        self.port = ready
        return ready

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw ``request`` bytes on a fresh connection to 127.0.0.1, read the answer until
    the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@dataclass
class RunningGatekeeper:
    port: int
    channel: grpc.Channel
    stub: pb_grpc.GatekeeperStub
    metrics_port: int | None = None  # with metrics_listen="127.0.0.1:0"
    http_port: int | None = None  # with http_listen="127.0.0.1:0"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


StartGatekeeper = Callable[..., RunningGatekeeper]


@pytest.fixture
def start_gatekeeper(
    redis_server: RedisServer | RedisCluster, database_url: str, tmp_path: Path
) -> Iterator[StartGatekeeper]:
    """Start gatekeepers (real gRPC on 127.0.0.1 port 0) against the test Redis."""
    started: list[tuple[ServerThread, grpc.Channel]] = []

    def start(
        *, store: EligibilityStore | None = None, policy: Policy | None = None, **settings: object
    ) -> RunningGatekeeper:
        options = {
            "redis_url": redis_server.url,
            "database_url": database_url,
            "listen": "127.0.0.1:0",
            "health_poll_seconds": 0.05,
            "audit_spool_dir": tmp_path / "audit-spool",
        }
        options.update(settings)
        thread = ServerThread(Settings(**options), store, policy)  # type: ignore[arg-type]
        port = thread.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((thread, channel))
        return RunningGatekeeper(port, channel, pb_grpc.GatekeeperStub(channel), thread.metrics_port, thread.http_port)

    yield start
    for thread, channel in started:
        channel.close()
        thread.stop()


@pytest.fixture
def gatekeeper(start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> RunningGatekeeper:
    """A gatekeeper with the default policy on an empty cache."""
    return start_gatekeeper()
