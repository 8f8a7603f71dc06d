"""scripts/demo tells the product's story end to end, read through the commands a newcomer runs:
a claim settled, a suspension published on the live feed, the same claim blocked, and the
review finding that recovers what the first settlement paid."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gatekeeper.core.cst import format_cst
from tests.integration.registry import DEMO_CLAIM, REPO
from tests.integration.test_cli import BIN
from tests.servers import RedisServer, free_port

SUSPEND_AFTER = 4  # seconds after the gatekeeper is SERVING: time for the first check


class Demo:
    """scripts/demo in its own process group, its stdout read line by line in a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        command = [str(REPO / "scripts" / "demo"), "--no-install", "--suspend-after", str(SUSPEND_AFTER)]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # type: ignore[union-attr]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while not any(text in line for line in self.seen):
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"scripts/demo ended before printing {text!r}: {self.seen}"
            self.seen.append(line)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)  # the demo stops what it started
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)  # its group: only what this test started
                self.process.wait(timeout=10)


@pytest.fixture
def demo(
    redis_server: RedisServer, redis_client: redis.Redis, database_url: str, tmp_path: Path
) -> Iterator[tuple[Demo, dict[str, str]]]:
    state = tmp_path / "demo" / "state.json"
    env = os.environ | {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": database_url,
        "GATEKEEPER_LISTEN": f"127.0.0.1:{free_port()}",
        "GATEKEEPER_HTTP_LISTEN": f"127.0.0.1:{free_port()}",  # where serve has a JSON-over-HTTP door: never 8080
        "GATEKEEPER_WORKERS": "1",
        "GATEKEEPER_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEKEEPER_DEMO_STATE": str(state),
    }
    running = Demo(env)
    # What the newcomer's second terminal has: no addresses of its own, only the demo's file.
    client_env = {k: v for k, v in env.items() if k not in ("REDIS_URL", "DATABASE_URL", "GATEKEEPER_LISTEN")}
    try:
        yield running, client_env
    finally:
        assert running.stop() in (0, 143)
    assert not state.exists()  # a stopped demo leaves no addresses behind


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def first_item(env: dict[str, str]) -> tuple[list[str], str]:
    """The demo claim checked: item 1's verdict and reason, and the decision id."""
    checked = run(str(BIN / "gatekeeper"), "check", str(DEMO_CLAIM), "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    response = json.loads(checked.stdout)
    item = response["items"][0]
    assert item["feedetl_sn"] == "1"
    return [item["verdict"], item["reason"]], response["decision_id"]


def test_a_claim_allowed_then_a_suspension_published_then_blocked_then_recovered(
    demo: tuple[Demo, dict[str, str]],
) -> None:
    running, env = demo
    running.wait_for("The demo is running.", within=60)
    since = format_cst(int(time.time()) - 60)

    allowed, settled_decision = first_item(env)
    assert allowed == ["VERDICT_ALLOW", "REASON_OK"]  # D110105000001 is registered

    running.wait_for("published 1 change(s) from demo/suspension.jsonl", within=SUSPEND_AFTER + 20)
    # Until follow has applied it (it polls every 0.5 s); asked without recording a decision.
    ask = ("practitioner", "D110105000001", "--at", "2026-11-20 09:15:00", "--json")
    deadline = time.monotonic() + 10
    while json.loads(run(str(BIN / "gatekeeper"), *ask, env=env).stdout)["may_bill"]:
        assert time.monotonic() < deadline, "the published suspension never reached the gatekeeper"
    blocked, _ = first_item(env)
    assert blocked == ["VERDICT_BLOCK", "REASON_SUSPENDED"]
    status = run(str(BIN / "gatekeeper-loader"), "status", "--json", env=env)
    assert json.loads(status.stdout)["registry_version"] == "demo-20261120@33"

    until = format_cst(int(time.time()) + 60)
    review = run(str(BIN / "gatekeeper"), "review", "--since", since, "--until", until, "--json", env=env)
    assert review.returncode == 0, review.stderr
    findings = [json.loads(line) for line in review.stdout.splitlines()]
    # The settlement made before the suspension is to be recovered; the blocked ones stand.
    assert [(f["action"], f["decision_id"], f["claim_id"], f["feedetl_sn"], f["prac_psn_code"]) for f in findings] == [
        ("recover", settled_decision, "DEMO-CLAIM-0001", "1", "D110105000001")
    ]
    assert findings[0]["amount_fen"] == 2500
