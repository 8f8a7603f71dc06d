"""Real servers for tests (and benchmarks): a private redis-server (or Redis Cluster, over TLS if
asked) and a private PostgreSQL on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import redis
from redis.crc import key_slot

from gatekeeper.cache import keys
from gatekeeper.cache.client import sync_client
from loader.cache import LISTPACK_SETTINGS
from tests.certs import CertificateAuthority, Issued

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class RedisTls:
    """Mutual TLS for redis-server, as Redis defaults to it (``tls-auth-clients yes``): a
    private CA, the server certificate every node shows (for 127.0.0.1 and localhost), and
    the one client certificate that clients, replicas and cluster peers all present."""

    ca_path: Path
    server: Issued
    client: Issued

    def server_args(self) -> list[str]:
        """redis-server options; its peers' certificates are checked too (the default)."""
        return [
            *("--tls-cert-file", str(self.server.cert_path), "--tls-key-file", str(self.server.key_path)),
            # A node dialling a peer or its master is a TLS client: it needs a clientAuth certificate.
            *("--tls-client-cert-file", str(self.client.cert_path)),
            *("--tls-client-key-file", str(self.client.key_path)),
            *("--tls-ca-cert-file", str(self.ca_path), "--tls-auth-clients", "yes"),
        ]

    def cli_args(self) -> list[str]:
        """redis-cli options."""
        client = self.client
        return ["--tls", "--cacert", str(self.ca_path), "--cert", str(client.cert_path), "--key", str(client.key_path)]

    def client_options(self) -> dict[str, Any]:
        """redis-py connection options."""
        return {"ssl": True, **self.url_options()}

    def url_options(self) -> dict[str, str]:
        """The same, as query parameters of a ``rediss://`` URL (redis-py passes them on)."""
        return {
            "ssl_ca_certs": str(self.ca_path),
            "ssl_certfile": str(self.client.cert_path),
            "ssl_keyfile": str(self.client.key_path),
        }

    def url_query(self) -> str:
        """:meth:`url_options` as a URL's query string."""
        return urlencode(self.url_options(), quote_via=quote, safe="/")


def make_tls(directory: Path) -> RedisTls:
    """A CA of its own in ``directory`` and the certificates it issues for a TLS Redis."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority(directory, "redis-ca")
    return RedisTls(authority.cert_path, authority.issue("redis", server=True), authority.issue("redis-client"))


@dataclass
class RedisServer:
    """A redis-server process of our own on 127.0.0.1 (on a TLS port only, with ``tls``)."""

    process: subprocess.Popen[str]
    port: int
    directory: Path
    tls: RedisTls | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{self.tls.url_query()}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        tls = {} if self.tls is None else self.tls.client_options()
        return redis.Redis(port=self.port, **tls, **options)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would go: no goodbye to the cluster."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(
    directory: Path, port: int | None = None, extra_args: Sequence[str] = (), *, tls: RedisTls | None = None
) -> RedisServer:
    """Start redis-server (no persistence unless ``extra_args`` turn it on, listpack limits
    raised) and wait until it is ready. With ``tls``, ``port`` is its TLS port and it has no other."""
    port = port or free_port()
    listen = ["--port", str(port)] if tls is None else ["--port", "0", "--tls-port", str(port), *tls.server_args()]
    args = [REDIS_SERVER, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--loglevel", "notice"]
    for name, value in LISTPACK_SETTINGS.items():
        args += [f"--{name}", value]
    args += extra_args  # later options win
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # the ready signal: redis logs this once it listens
        seen.append(line)
        if "Ready to accept connections" in line:
            break
    else:
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its log
    return RedisServer(process, port, directory, tls)


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: pg_config's answer, else Debian's newest version."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of our own on 127.0.0.1 (trust authentication), in a throwaway directory."""

    bindir: Path
    directory: Path
    port: int
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        command = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-w", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.pg_ctl("stop", "-m", "fast")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres(port: int | None = None) -> PostgresServer:
    """initdb and start a private cluster; as root (initdb and pg_ctl refuse to run as root),
    as the ``postgres`` user that Debian's package creates."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb is missing: apt-get install postgresql (scripts/install does)")
    directory = Path(tempfile.mkdtemp(prefix="gk-postgres-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = port or free_port()
    server = PostgresServer(bindir, directory, port, run_as)
    data = directory / "data"
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    server.pg_ctl("start", "-l", str(directory / "postgres.log"), "-o", options)
    return server


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
CLUSTER_READY_SECONDS = 30.0
MANUAL_FAILOVER_SECONDS = 6.0  # Redis gives a manual failover 5 s (CLUSTER_MF_TIMEOUT)


@dataclass
class RedisCluster:
    """Six redis-server processes of our own in one Redis Cluster: three masters, each with a
    replica; with ``tls``, clients, replication and the cluster bus all over TLS."""

    nodes: list[RedisServer]
    directory: Path
    node_args: Sequence[str] = ()  # each node's extra redis-server options, a restart's too
    tls: RedisTls | None = None

    @property
    def url(self) -> str:
        """The gatekeeper's URL for the cluster: any node will do."""
        if self.tls is not None:
            return f"rediss+cluster://127.0.0.1:{self.nodes[0].port}?{self.tls.url_query()}"
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def port(self) -> int:
        """The port of the master that holds the cache (every key is in the slot of ``{gk}``)."""
        return self.master_of(keys.META).port

    def client(self) -> redis.Redis:
        """What the loader and the commands use: a client of the master owning the cache's slot."""
        return sync_client(self.url)

    def flushall(self) -> None:
        """Empty every master (replicas follow)."""
        tls = {} if self.tls is None else self.tls.client_options()
        with redis.RedisCluster(host="127.0.0.1", port=self.running()[0].port, **tls) as client:
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process.poll() is None]

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot as master, as the nodes themselves say."""
        slot = key_slot(key.encode())
        for node in self.running():
            with node.client(socket_timeout=1) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS", NEVER_DECODE=True):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The node replicating ``master``, as the master says."""
        with master.client(socket_timeout=1) as client:
            replica = client.info("replication")["slave0"]
        return next(n for n in self.nodes if n.port == int(replica["port"]))

    def wait_slot_served(self, key: str, timeout: float = CLUSTER_READY_SECONDS) -> RedisServer:
        """Until a running master serves ``key``'s slot and the cluster says ok (after a
        failover: the replica was promoted); returns that master."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, RuntimeError, StopIteration):
                master = self.master_of(key)
                with master.client(socket_timeout=1) as client:
                    if master.process.poll() is None and client.cluster("info")["cluster_state"] == "ok":
                        return master
            if time.monotonic() > deadline:
                raise RuntimeError(f"no running master took over the slot of {key}")
            time.sleep(0.05)

    def promote(self, replica: RedisServer, key: str, timeout: float = CLUSTER_READY_SECONDS) -> None:
        """A planned failover: ``replica`` takes over ``key``'s slot from its running master,
        nothing lost. Redis drops a manual failover that has not finished in 5 s (when the
        master had not yet learnt that this node is its replica, or the vote failed), and
        says nothing: so the request is made again until the node serves the slot."""
        deadline = time.monotonic() + timeout
        while True:
            with replica.client(socket_timeout=1) as client:
                client.execute_command("CLUSTER", "FAILOVER")
            attempt_ends = min(deadline, time.monotonic() + MANUAL_FAILOVER_SECONDS)
            while time.monotonic() < attempt_ends:
                with contextlib.suppress(redis.RedisError, RuntimeError):
                    if self.master_of(key).port == replica.port:
                        return
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"node {replica.port} did not take over the slot of {key}")

    def wait_healthy(self, timeout: float = CLUSTER_READY_SECONDS) -> None:
        """Until every running node says ``cluster_state:ok``, all 16384 slots served, and
        each master has a replica linked to it."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not become healthy: {problem}")
            time.sleep(0.05)

    def _problem(self) -> str | None:
        masters = 0
        for node in self.running():
            try:
                with node.client(socket_timeout=1) as client:
                    info = client.cluster("info")
                    replication = client.info("replication")
                    slots = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError as error:
                return f"node {node.port}: {error}"
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return f"node {node.port}: {info.get('cluster_state')}, {info.get('cluster_slots_ok')} slots ok"
            if any(len(served) < 4 for served in slots):  # start, end, master, replica: what clients learn
                return f"node {node.port} does not list a replica for every slot yet"
            if replication["role"] == "master":
                masters += 1
                if replication.get("connected_slaves", 0) < 1:
                    return f"master {node.port} has no replica yet"
            elif replication.get("master_link_status") != "up":
                return f"replica {node.port} is not linked to its master yet"
        if masters != 3:
            return f"{masters} masters"
        return None

    def restart(self, node: RedisServer) -> RedisServer:
        """Start a stopped node again on its port, bus port and nodes.conf: it rejoins the
        cluster (a master that was failed over comes back as its replacement's replica)."""
        args = [str(arg) for arg in node.process.args]  # type: ignore[union-attr]
        bus_port = int(args[args.index("--cluster-port") + 1])
        restarted = start_cluster_node(node.directory, node.port, bus_port, self.node_args, tls=self.tls)
        self.nodes[self.nodes.index(node)] = restarted
        return restarted

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster_node(
    directory: Path,
    port: int | None = None,
    bus_port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    tls: RedisTls | None = None,
) -> RedisServer:
    """One cluster-enabled redis-server (its nodes.conf in ``directory``, which a restart reuses)."""
    directory.mkdir(parents=True, exist_ok=True)
    options = ["--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf")]
    # The bus port is the client port + 10000 unless named: a free port of its own.
    options += ["--cluster-port", str(bus_port or free_port())]
    # Fail over within a second of a master going silent; tests wait on that.
    options += ["--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"]
    if tls is not None:  # the cluster bus and replication over TLS too
        options += ["--tls-cluster", "yes", "--tls-replication", "yes"]
    return start_redis(directory, port, [*options, *extra_args], tls=tls)


def start_cluster(directory: Path, extra_args: Sequence[str] = (), *, tls: RedisTls | None = None) -> RedisCluster:
    """Six nodes on free loopback ports, made a cluster by ``redis-cli --cluster create``;
    ``extra_args`` go to every node (persistence, for one); with ``tls`` (:func:`make_tls`),
    every node listens on a TLS port only."""
    nodes: list[RedisServer] = []
    try:
        for number in range(6):
            nodes.append(start_cluster_node(directory / f"node-{number}", extra_args=extra_args, tls=tls))
        cluster = RedisCluster(nodes, directory, extra_args, tls)
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        cli_tls = [] if tls is None else tls.cli_args()
        subprocess.run(
            [REDIS_CLI, *cli_tls, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_healthy()
    except BaseException:
        for node in nodes:
            node.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return cluster
