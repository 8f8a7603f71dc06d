"""What the two commands print when something expected goes wrong: one line naming it, never a traceback.

Redis or the gatekeeper unreachable, a client's TLS mistakes, a reader that closes the pipe
(``… | head``), a file that is not there: each run of the real command ends with one line on
stderr (or, for a closed pipe, silently with 141) and no C-library abort.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_cli import BIN
from tests.servers import RedisServer, free_port

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
    assert one_line(result) == f"gatekeeper-loader {name}: cannot reach Redis at {url}: Connection refused"


def test_a_redis_password_is_not_printed(nowhere: str, tmp_path: Path) -> None:
    env = os.environ | {"REDIS_URL": f"redis://reader:s3cret@{nowhere}/0"}
    result = run(LOADER, "status", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == f"gatekeeper-loader status: cannot reach Redis at redis://reader:***@{nowhere}/0: " + (
        "Connection refused"
    )
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("command", [(LOADER, "status")])
def test_a_redis_url_that_is_not_one_is_a_usage_error(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run(*command, env=os.environ | {"REDIS_URL": "http://127.0.0.1:6379"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "'http://127.0.0.1:6379'" in one_line(result) and "redis://" in one_line(result)


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
        (LOADER, "status"),
    ],
    ids=["loader status"],
)
def test_a_closed_pipe_ends_the_command_quietly(
    command: tuple[str, ...], redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    load(redis_client, DEMO_REGISTRY)
    result = run_into_closed_pipe(*command, env=os.environ | {"REDIS_URL": redis_server.url}, cwd=tmp_path)
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
