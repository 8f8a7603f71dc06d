"""The process: a supervisor that restarts dead workers, and one instance per port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.integration.registry import DEMO_REGISTRY
from tests.integration.test_check_claim import demo_claim
from tests.integration.test_cli import BIN, cli_env, run  # noqa: F401 - cli_env is a fixture
from tests.servers import free_port

WAIT_SECONDS = 20.0


class Serving:
    """A ``gatekeeper serve`` process whose log is read as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "gatekeeper"), "serve", "--log-format", "text", *args],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = WAIT_SECONDS) -> None:
        """Wait until ``count`` log lines contain ``text`` (or the process ends)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {count} x {text!r} in the log:\n{''.join(self.lines)}")
                self._changed.wait(min(remaining, 0.5))

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)
        finally:
            self._reader.join(timeout=10)


def serve_once(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``gatekeeper serve`` expected to fail at once; killed with its workers if it does not."""
    process = subprocess.Popen(
        [str(BIN / "gatekeeper"), "serve", "--log-format", "text", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: this process and its workers only
        _, stderr = process.communicate(timeout=10)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


@pytest.fixture
def servers() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for server in started:
        server.stop()


def answers(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc.GatekeeperStub(channel).CheckClaim(demo_claim(), timeout=5).decision_id


def test_a_killed_worker_is_restarted_and_the_others_keep_serving(
    cli_env: dict[str, str],  # noqa: F811 - the fixture
    servers: list[Serving],
) -> None:
    assert run(str(BIN / "gatekeeper-loader"), "snapshot", str(DEMO_REGISTRY), env=cli_env).returncode == 0
    server = Serving(cli_env, "--workers", "2")
    servers.append(server)
    server.wait_for("health: SERVING", count=2)
    first = server.workers()
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    server.wait_for("killed by SIGKILL")
    for _ in range(8):  # new connections, while the survivor alone listens
        answers(cli_env["GATEKEEPER_LISTEN"])
    server.wait_for("restarted as pid")
    assert server.process.poll() is None, "the supervisor must not stop the service"
    server.wait_for("health: SERVING", count=3)  # the new worker is serving too
    for _ in range(8):  # new connections, spread by the kernel over both workers
        answers(cli_env["GATEKEEPER_LISTEN"])
    now = server.workers()
    assert len(now) == 2 and victim not in now and first - {victim} <= now
    log = "".join(server.lines)
    assert "killed by SIGKILL" in log and "restart 1 of at most" in log
    assert server.stop() == 0, log


def test_a_second_instance_on_the_same_port_fails_with_one_line(
    cli_env: dict[str, str],  # noqa: F811 - the fixture
    servers: list[Serving],
) -> None:
    assert run(str(BIN / "gatekeeper-loader"), "snapshot", str(DEMO_REGISTRY), env=cli_env).returncode == 0
    first = Serving(cli_env, "--workers", "2")
    servers.append(first)
    first.wait_for("health: SERVING", count=2)
    for workers in ("2", "1"):
        second = serve_once(cli_env, "--workers", workers)
        lines = second.stderr.strip().splitlines()
        assert second.returncode != 0 and len(lines) == 1, second.stderr
        assert cli_env["GATEKEEPER_LISTEN"].rsplit(":", 1)[1] in lines[0]
    answers(cli_env["GATEKEEPER_LISTEN"])
    assert len(first.workers()) == 2 and first.process.poll() is None


@pytest.mark.parametrize("door", ["GATEKEEPER_LISTEN", "GATEKEEPER_HTTP_LISTEN"], ids=["grpc", "http"])
def test_a_port_another_program_listens_on_fails_with_one_line(cli_env: dict[str, str], door: str) -> None:  # noqa: F811
    port = free_port()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gatekeeper worker would
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = cli_env | {door: f"127.0.0.1:{port}"}
        result = serve_once(env, "--workers", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert str(port) in lines[0]
