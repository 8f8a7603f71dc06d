"""A Redis Cluster over TLS (``rediss+cluster://``) end to end: six nodes on TLS ports only,
the cluster bus and replication over TLS too, clients made to show a certificate (Redis's
default); the loader fills it, a gatekeeper decides from it, a wrong CA is one plain line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gatekeeper.cache import keys
from gatekeeper.v1 import gatekeeper_pb2 as pb
from tests.certs import CertificateAuthority
from tests.integration.conftest import StartGatekeeper
from tests.integration.test_check_claim import wait_until_serving
from tests.integration.test_degraded import COLD, claim, registry
from tests.servers import RedisCluster, make_tls, start_cluster

LOADER = Path(sys.executable).parent / "gatekeeper-loader"
# What each node is told (tests/servers.py RedisTls): no plain-text port at all, the cluster
# bus and replication over TLS, clients without a certificate of the CA turned away.
TLS_ONLY = {"port": "0", "tls-cluster": "yes", "tls-replication": "yes", "tls-auth-clients": "yes"}
# A replica is listed in CLUSTER SLOTS (which wait_healthy waits for) once its replication
# offset moves: the master's first ping to replicas, 10 s by default, after a full sync that
# waits 5 s by default for more replicas. Here: ready in about 3 s rather than 11.
QUICK_REPLICAS = ("--repl-ping-replica-period", "1", "--repl-diskless-sync-delay", "0")


@dataclass
class LoadedCluster:
    """The module's TLS cluster and what ``gatekeeper-loader snapshot`` said loading it."""

    cluster: RedisCluster
    loaded: subprocess.CompletedProcess[str]
    env: dict[str, str]


def loader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOADER), *args], env=env, capture_output=True, text=True, timeout=60)


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (``None``: removed), as an operator would edit it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    kept = {name: value for name, value in query.items() if value is not None}
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/")))


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[LoadedCluster]:
    """A TLS-only Redis Cluster of this module's own, loaded by the loader's command over TLS."""
    directory = Path(tempfile.mkdtemp(prefix="gk-cluster-tls-"))
    cluster = start_cluster(directory, QUICK_REPLICAS, tls=make_tls(directory / "pki"))
    try:
        # --redis-url only: no REDIS_URL, no running scripts/demo's address to fall back on.
        env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
        env["GATEKEEPER_DEMO_STATE"] = str(directory / "no-demo" / "state.json")
        loaded = loader("snapshot", str(registry(directory)), "--redis-url", cluster.url, env=env)
        if loaded.returncode == 0:
            with cluster.master_of(keys.META).client() as master:
                master.wait(1, 5_000)  # its replica holds the registry too: replica reads find it
        yield LoadedCluster(cluster, loaded, env)
    finally:
        cluster.stop()


def test_the_cluster_speaks_only_tls(tls_cluster: LoadedCluster) -> None:
    for node in tls_cluster.cluster.nodes:
        with node.client(socket_timeout=2) as client:
            said = {name: client.config_get(name)[name] for name in TLS_ONLY}
            assert said == TLS_ONLY
        plain = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.ConnectionError), plain:
            plain.ping()  # a plain-text client is cut off


def test_the_loader_loads_and_reports_over_tls(tls_cluster: LoadedCluster) -> None:
    loaded = tls_cluster.loaded
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded snapshot outage: 302 practitioners from 303 rows (0 bad)" in loaded.stdout
    assert f"into Redis at {tls_cluster.cluster.url} (--redis-url)" in loaded.stdout

    status = loader("status", "--json", "--redis-url", tls_cluster.cluster.url, env=tls_cluster.env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["snapshot_id"], report["registry_version"], report["record_count"]) == ("outage", "outage@500", 302)
    assert report["loading"] is None


@pytest.mark.parametrize("replica_reads", [False, True], ids=["masters", "replicas"])
def test_a_gatekeeper_decides_from_the_tls_cluster(
    tls_cluster: LoadedCluster, start_gatekeeper: StartGatekeeper, replica_reads: bool
) -> None:
    # No near cache warmed from the snapshot: each code below is read from the cluster.
    gatekeeper = start_gatekeeper(
        redis_url=tls_cluster.cluster.url, redis_replica_reads=replica_reads, near_cache_warm=False
    )
    wait_until_serving(gatekeeper.target)  # health read the cache's state over TLS

    answer = gatekeeper.stub.CheckClaim(claim("tls", COLD[7]), timeout=5)

    decided = [(item.verdict, item.reason) for item in answer.items]
    assert decided == [
        (pb.VERDICT_ALLOW, pb.REASON_OK),  # registered
        (pb.VERDICT_BLOCK, pb.REASON_SUSPENDED),  # suspended from 2026-11-01
        (pb.VERDICT_ALLOW, pb.REASON_OK),  # registered, and read now: not settled unverified
    ]
    assert answer.registry_version == "outage@500"


@pytest.mark.parametrize("mistake", ["wrong-ca", "no-client-certificate"])
def test_a_wrong_tls_url_is_one_line_not_a_traceback(tls_cluster: LoadedCluster, tmp_path: Path, mistake: str) -> None:
    rogue_ca = CertificateAuthority(tmp_path, "rogue-ca")  # it signed nothing the nodes show
    url, said = {
        "wrong-ca": (
            with_query(tls_cluster.cluster.url, ssl_ca_certs=str(rogue_ca.cert_path)),
            ("CERTIFICATE_VERIFY_FAILED",),
        ),
        # In TLS 1.3 the server turns a client away after the handshake: the client reads its
        # alert, or finds the connection closed, as the timing falls.
        "no-client-certificate": (
            with_query(tls_cluster.cluster.url, ssl_certfile=None, ssl_keyfile=None),
            ("CERTIFICATE_REQUIRED", "EOF occurred in violation of protocol"),
        ),
    }[mistake]

    status = loader("status", "--redis-url", url, env=tls_cluster.env)

    assert status.returncode == 1
    assert "Traceback" not in status.stderr
    [line] = status.stderr.splitlines()
    assert line.startswith(f"gatekeeper-loader status: cannot reach Redis at {url} (--redis-url): ")
    assert any(words in line for words in said), line
