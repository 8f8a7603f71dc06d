"""What the two commands print when something expected goes wrong: one line naming it, never a traceback.

Redis or the gatekeeper unreachable, a client's TLS mistakes, a reader that closes the pipe
(``… | head``), a file that is not there: each run of the real command ends with one line on
stderr (or, for a closed pipe, silently with 141) and no C-library abort.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gatekeeper.audit.records import Batch, Entry
from gatekeeper.audit.writer import PostgresRecordStore
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.rules import Claim, Item, decide_claim
from tests.certs import CertificateAuthority, Issued
from tests.integration.conftest import RunningGatekeeper, StartGatekeeper
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY, load
from tests.integration.test_cli import BIN
from tests.servers import RedisServer, free_port, start_redis

GATEKEEPER = str(BIN / "gatekeeper")
LOADER = str(BIN / "gatekeeper-loader")
PERIOD = ("--since", "2026-11-01 00:00:00", "--until", "2026-11-02 00:00:00")
CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`'s `yes`


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed on stderr (asserting there is exactly one)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def nowhere() -> str:
    """A loopback HOST:PORT where nothing listens."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def env_without_redis(nowhere: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {"REDIS_URL": f"redis://{nowhere}/0", "GATEKEEPER_AUDIT_SPOOL_DIR": str(tmp_path / "spool")}


# Redis unreachable ---------------------------------------------------------------------------

GATEKEEPER_RECORD_COMMANDS = {
    "audit export": ("audit", "export", *PERIOD),
    "audit claim": ("audit", "claim", "C1"),
    "audit counts": ("audit", "counts", *PERIOD),
    "audit migrate": ("audit", "migrate"),
    "audit prune": ("audit", "prune"),
    "review": ("review", *PERIOD),
}


@pytest.mark.parametrize("name", sorted(GATEKEEPER_RECORD_COMMANDS))
def test_gatekeeper_names_the_decision_record_it_cannot_reach(
    name: str, env_without_redis: dict[str, str], nowhere: str
) -> None:
    url = f"postgresql://reader:s3cret@{nowhere}/gatekeeper"
    result = run(GATEKEEPER, *GATEKEEPER_RECORD_COMMANDS[name], env=env_without_redis | {"DATABASE_URL": url})
    assert result.returncode == 1
    shown = f"postgresql://reader:***@{nowhere}/gatekeeper"
    assert one_line(result).startswith(
        f"gatekeeper {name}: cannot reach the decision record at {shown} (env DATABASE_URL): "
    )
    assert "Connection refused" in one_line(result) and "s3cret" not in result.stderr


def test_review_names_the_redis_it_cannot_reach(env_without_redis: dict[str, str], database_url: str) -> None:
    result = run(GATEKEEPER, "review", *PERIOD, env=env_without_redis | {"DATABASE_URL": database_url})
    assert result.returncode == 1
    url = env_without_redis["REDIS_URL"]
    assert one_line(result).startswith(f"gatekeeper review: cannot read the eligibility cache at {url}: ")


def loader_redis_commands(tmp_path: Path) -> dict[str, tuple[str, ...]]:
    changes = tmp_path / "changes.jsonl"
    changes.write_text("", encoding="utf-8")
    return {
        "status": ("status",),
        "snapshot": ("snapshot", str(DEMO_REGISTRY)),
        "apply": ("apply", str(changes)),
        "follow": ("follow", "http://127.0.0.1:9"),
    }


@pytest.mark.parametrize("name", ["status", "snapshot", "apply", "follow"])
def test_the_loader_names_the_redis_it_cannot_reach(
    name: str, env_without_redis: dict[str, str], tmp_path: Path
) -> None:
    result = run(LOADER, *loader_redis_commands(tmp_path)[name], env=env_without_redis, cwd=tmp_path)
    assert result.returncode == 1
    url = env_without_redis["REDIS_URL"]
    assert (
        one_line(result) == f"gatekeeper-loader {name}: cannot reach Redis at {url} (env REDIS_URL): Connection refused"
    )


# A Redis that answers but will not take writes, and what it says: out of memory under
# noeviction, and a replica (of a master that is not there).
REFUSING_REDIS = {
    "out of memory": (("--maxmemory", "1mb", "--maxmemory-policy", "noeviction"), "when used memory > 'maxmemory'"),
    "a replica": (("--replicaof", "127.0.0.1", "9"), "You can't write against a read only replica."),
}


@pytest.mark.parametrize("case", sorted(REFUSING_REDIS))
def test_the_loader_names_the_redis_that_refuses_its_writes(case: str, tmp_path: Path) -> None:
    settings, says = REFUSING_REDIS[case]
    (tmp_path / "redis").mkdir()
    server = start_redis(tmp_path / "redis", extra_args=settings)
    try:
        env = {**os.environ, "REDIS_URL": server.url}
        result = run(LOADER, "snapshot", str(DEMO_REGISTRY), "--quarantine", str(tmp_path / "q.jsonl"), env=env)
    finally:
        server.stop()
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"gatekeeper-loader snapshot: Redis at {server.url} (env REDIS_URL) refused: "), line
    assert says in line


@pytest.mark.parametrize("name", ["status", "snapshot", "follow"])
def test_the_loader_names_the_redis_cluster_it_cannot_reach(name: str, nowhere: str, tmp_path: Path) -> None:
    url = f"redis+cluster://{nowhere}"
    result = run(LOADER, *loader_redis_commands(tmp_path)[name], env=os.environ | {"REDIS_URL": url}, cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result).startswith(f"gatekeeper-loader {name}: cannot reach Redis at {url} (env REDIS_URL): ")


def test_a_redis_password_is_not_printed(nowhere: str, tmp_path: Path) -> None:
    env = os.environ | {"REDIS_URL": f"redis://reader:s3cret@{nowhere}/0"}
    result = run(LOADER, "status", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == (
        f"gatekeeper-loader status: cannot reach Redis at redis://reader:***@{nowhere}/0 (env REDIS_URL): "
        "Connection refused"
    )
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("command", [(LOADER, "status"), (GATEKEEPER, "review", "--follow")])
def test_a_redis_url_that_is_not_one_is_a_usage_error(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run(*command, env=os.environ | {"REDIS_URL": "http://127.0.0.1:6379"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "'http://127.0.0.1:6379'" in one_line(result) and "redis://" in one_line(result)
    assert "redis+cluster://" in one_line(result)  # the schemes of a Redis Cluster are named too


def test_serve_starts_without_redis_and_logs_no_traceback(env_without_redis: dict[str, str]) -> None:
    listen = f"127.0.0.1:{free_port()}"
    command = [GATEKEEPER, "serve", "--listen", listen, "--workers", "1", "--log-format", "text"]
    server = subprocess.Popen(command, env=env_without_redis, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    seen = []
    try:
        for line in server.stderr:  # the ready signal: the first failed look at the registry
            seen.append(line)
            if "could not check the registry data's age" in line:
                break
        health = run(GATEKEEPER, "health", "--target", listen, env=env_without_redis)
    finally:
        server.send_signal(signal.SIGTERM)
        _, rest = server.communicate(timeout=30)
    log = "".join(seen) + rest
    assert server.returncode == 0, log
    redis_address = env_without_redis["REDIS_URL"].removeprefix("redis://").removesuffix("/0")
    assert f"could not check the registry data's age: Error 111 connecting to {redis_address}" in log
    assert "Traceback" not in log
    assert health.returncode == 1  # serving, but not SERVING
    assert health.stdout.strip() == f"NOT_SERVING: the gatekeeper at {listen} (--target)"


def test_an_audit_period_that_ends_before_it_starts_is_a_usage_error(env_without_redis: dict[str, str]) -> None:
    backwards = ("--since", "2026-11-02 00:00:00", "--until", "2026-11-01 00:00:00")
    result = run(GATEKEEPER, "audit", "counts", *backwards, env=env_without_redis)
    assert result.returncode == 2
    assert one_line(result) == "gatekeeper audit counts: --until must be after --since"


def test_a_follow_lease_of_no_time_is_a_usage_error(env_without_redis: dict[str, str], tmp_path: Path) -> None:
    result = run(LOADER, "follow", "http://127.0.0.1:9", "--lease", "0", env=env_without_redis, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == "gatekeeper-loader follow: --lease must be more than 0 seconds, not 0"


# The gatekeeper unreachable ------------------------------------------------------------------

CLIENT_COMMANDS = {
    "check": ("check", str(DEMO_CLAIM)),
    "practitioner": ("practitioner", "D410102000002"),
    "health": ("health",),
}


@pytest.mark.parametrize("name", sorted(CLIENT_COMMANDS))
def test_a_client_names_the_gatekeeper_it_cannot_reach(name: str, nowhere: str) -> None:
    result = run(GATEKEEPER, *CLIENT_COMMANDS[name], "--target", nowhere, env=dict(os.environ))
    assert result.returncode == 1
    assert one_line(result) == (
        f"gatekeeper {name}: cannot reach the gatekeeper at {nowhere} (--target): Connection refused; "
        "is the gatekeeper running there?"
    )


def test_a_client_says_when_the_target_is_not_a_grpc_server(redis_server: RedisServer) -> None:
    target = f"127.0.0.1:{redis_server.port}"
    result = run(GATEKEEPER, "health", "--target", target, env=dict(os.environ))
    assert result.returncode == 1
    assert one_line(result).startswith(f"gatekeeper health: cannot reach the gatekeeper at {target} (--target): ")
    assert "not a gRPC server" in one_line(result)


# A client's TLS mistakes ---------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CertificateAuthority, Issued, Issued, Issued]:
    """The server CA, the server's certificate, a client certificate and another client's."""
    server_ca = CertificateAuthority(tmp_path, "server-ca")
    client_ca = CertificateAuthority(tmp_path, "client-ca")
    return (
        server_ca,
        server_ca.issue("gatekeeper", server=True),
        client_ca.issue("his.hospital-a.example"),
        client_ca.issue("his.hospital-b.example"),
    )


@pytest.fixture
def tls_gatekeeper(
    pki: tuple[CertificateAuthority, Issued, Issued, Issued],
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[RunningGatekeeper]:
    load(redis_client, DEMO_REGISTRY)
    _, server, client, _ = pki
    callers = tmp_path / "callers.toml"
    callers.write_text('[callers."CN=his.hospital-a.example"]\ninstitutions = ["*"]\n', encoding="utf-8")
    yield start_gatekeeper(
        tls_cert_path=server.cert_path,
        tls_key_path=server.key_path,
        tls_client_ca_path=client.cert_path.parent / "client-ca.crt",
        callers_path=callers,
    )


def tls_mistakes(pki: tuple[CertificateAuthority, Issued, Issued, Issued], tmp_path: Path) -> dict[str, object]:
    server_ca, _, client, other = pki
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("this is not a certificate\n", encoding="utf-8")
    missing = tmp_path / "missing.key"
    ca = ("--tls-ca", str(server_ca.cert_path))
    return {
        "a certificate without its key": (
            (*ca, "--tls-cert", str(client.cert_path)),
            "--tls-cert and --tls-key go together",
        ),
        "a key without its certificate": (
            (*ca, "--tls-key", str(client.key_path)),
            "--tls-cert and --tls-key go together",
        ),
        "a missing key file": (
            (*ca, "--tls-cert", str(client.cert_path), "--tls-key", str(missing)),
            f"--tls-key {missing}: No such file or directory",
        ),
        "a directory for a file": (
            ("--tls-ca", str(tmp_path)),
            f"--tls-ca {tmp_path}: Is a directory",
        ),
        "a CA that is not PEM": (
            ("--tls-ca", str(not_pem)),
            f"--tls-ca {not_pem}: not a PEM certificate",
        ),
        "a certificate that is not PEM": (
            (*ca, "--tls-cert", str(not_pem), "--tls-key", str(client.key_path)),
            f"--tls-cert {not_pem}: not a PEM certificate",
        ),
        "a key that is not PEM": (
            (*ca, "--tls-cert", str(client.cert_path), "--tls-key", str(not_pem)),
            f"--tls-key {not_pem}: not a PEM private key",
        ),
        "a certificate for a key": (
            (*ca, "--tls-cert", str(client.key_path), "--tls-key", str(client.key_path)),
            f"--tls-cert {client.key_path}: not a PEM certificate",
        ),
        "another certificate's key": (
            (*ca, "--tls-cert", str(client.cert_path), "--tls-key", str(other.key_path)),
            f"--tls-key {other.key_path} is not the key of --tls-cert {client.cert_path}",
        ),
    }


MISTAKES = [
    "a certificate without its key",
    "a key without its certificate",
    "a missing key file",
    "a directory for a file",
    "a CA that is not PEM",
    "a certificate that is not PEM",
    "a key that is not PEM",
    "a certificate for a key",
    "another certificate's key",
]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_tls_mistake_is_one_line_before_connecting(
    mistake: str, pki: tuple[CertificateAuthority, Issued, Issued, Issued], tmp_path: Path, nowhere: str
) -> None:
    flags, expected = tls_mistakes(pki, tmp_path)[mistake]  # type: ignore[misc]
    result = run(GATEKEEPER, "health", "--target", nowhere, *flags, env=dict(os.environ))
    assert result.returncode == 2, result.stderr  # not 134: no abort in the C library
    assert one_line(result) == f"gatekeeper health: {expected}"


def test_plain_text_to_a_tls_server_says_it_expects_tls(tls_gatekeeper: RunningGatekeeper) -> None:
    result = run(GATEKEEPER, "health", "--target", tls_gatekeeper.target, env=dict(os.environ))
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"gatekeeper health: cannot reach the gatekeeper at {tls_gatekeeper.target} (--target): ")
    assert "the server expects TLS" in line and "--tls-ca" in line


def test_tls_to_a_plain_text_server_says_it_speaks_plain_text(
    gatekeeper: RunningGatekeeper, pki: tuple[CertificateAuthority, Issued, Issued, Issued]
) -> None:
    server_ca = pki[0]
    tls = ("--tls-ca", str(server_ca.cert_path))
    result = run(GATEKEEPER, "health", "--target", gatekeeper.target, *tls, env=dict(os.environ))
    assert result.returncode == 1
    line = one_line(result)  # no INFO line of gRPC's C library either
    assert "the server speaks plain text" in line


def test_a_server_certificate_from_another_ca_is_named(
    tls_gatekeeper: RunningGatekeeper, pki: tuple[CertificateAuthority, Issued, Issued, Issued]
) -> None:
    _, _, client, _ = pki
    wrong_ca = ("--tls-ca", str(client.cert_path.parent / "client-ca.crt"))
    keys = ("--tls-cert", str(client.cert_path), "--tls-key", str(client.key_path))
    result = run(GATEKEEPER, "health", "--target", tls_gatekeeper.target, *wrong_ca, *keys, env=dict(os.environ))
    assert result.returncode == 1
    assert "certificate is not signed by --tls-ca" in one_line(result)


def test_no_client_certificate_for_a_server_that_requires_one(
    tls_gatekeeper: RunningGatekeeper, pki: tuple[CertificateAuthority, Issued, Issued, Issued]
) -> None:
    server_ca = pki[0]
    result = run(
        GATEKEEPER,
        "health",
        "--target",
        tls_gatekeeper.target,
        "--tls-ca",
        str(server_ca.cert_path),
        env=dict(os.environ),
    )
    assert result.returncode == 1
    assert "client certificate" in one_line(result)


# A closed pipe -------------------------------------------------------------------------------


def run_into_closed_pipe(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe nobody reads any more, as in ``… | head -1`` once head has exited."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(args, env=env, cwd=cwd, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "command",
    [
        (GATEKEEPER, "audit", "export", *PERIOD, "--format", "csv"),
        (GATEKEEPER, "audit", "counts", *PERIOD),
        (LOADER, "status"),
    ],
    ids=["audit export", "audit counts", "loader status"],
)
def test_a_closed_pipe_ends_the_command_quietly(
    command: tuple[str, ...], redis_server: RedisServer, redis_client: redis.Redis, database_url: str, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    env = os.environ | {"REDIS_URL": redis_server.url, "DATABASE_URL": database_url}
    result = run_into_closed_pipe(*command, env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (CLOSED_PIPE, "")


def record_decisions(database_url: str, count: int) -> None:
    """``count`` ten-item decisions on 2026-11-01 (CST), in the decision record."""
    when = parse_cst("2026-11-01 10:00:00")
    claim = Claim("C1", "H41010200001", tuple(Item(str(n), when, 100, ("D110105999999",), False) for n in range(10)))
    decision = decide_claim(claim, {}, RegionPolicy(), frozenset())
    entries = tuple(Entry(f"d-{n}", claim, decision, "snap@1", when * 1000 + n) for n in range(count))

    async def write() -> None:
        store = PostgresRecordStore(database_url)
        try:
            assert await store.write(Batch("b-1", entries))
        finally:
            await store.close()

    asyncio.run(write())


@pytest.mark.parametrize("record_format", ["jsonl", "csv"])
def test_a_closed_pipe_in_the_middle_of_an_export_ends_it_quietly(
    record_format: str, database_url: str, tmp_path: Path
) -> None:
    """More than a pipe's buffer to write: the reader is gone while the export's cursors are open."""
    record_decisions(database_url, 200)
    env = os.environ | {"DATABASE_URL": database_url}
    command = (GATEKEEPER, "audit", "export", *PERIOD, "--format", record_format)
    result = run_into_closed_pipe(*command, env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (CLOSED_PIPE, "")


def test_a_closed_pipe_in_a_shell_pipeline(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    pipeline = f"set -o pipefail; {LOADER} status | head -c 10 >/dev/null"
    result = subprocess.run(
        ["bash", "-c", pipeline],
        env=os.environ | {"REDIS_URL": redis_server.url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == ""
    assert result.returncode in (0, CLOSED_PIPE)  # 0 when status wrote everything before head left


# Files ---------------------------------------------------------------------------------------


def test_apply_names_a_change_file_that_is_not_there(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    missing = tmp_path / "changes-1.jsonl"
    result = run(LOADER, "apply", str(missing), env=os.environ | {"REDIS_URL": redis_server.url}, cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == f"gatekeeper-loader apply: {missing}: No such file or directory"


def test_generate_names_a_directory_it_cannot_make(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    result = run(LOADER, "generate", str(blocker / "registry"), "--people", "10", env=dict(os.environ), cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == f"gatekeeper-loader generate: {blocker / 'registry'}: Not a directory"


def test_feed_server_names_what_it_cannot_serve(tmp_path: Path, redis_server: RedisServer) -> None:
    missing = tmp_path / "nowhere"
    result = run(LOADER, "feed-server", str(missing), env=dict(os.environ), cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == f"gatekeeper-loader feed-server: {missing} is not a directory"

    port = str(redis_server.port)  # taken
    result = run(LOADER, "feed-server", str(tmp_path), "--port", port, env=dict(os.environ), cwd=tmp_path)
    assert result.returncode == 1
    expected = f"gatekeeper-loader feed-server: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert one_line(result) == expected
