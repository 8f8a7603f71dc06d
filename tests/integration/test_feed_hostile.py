"""``follow`` against a misbehaving change feed: a real threaded HTTP server on 127.0.0.1 port 0
whose answers each test scripts. Every bad answer is refused, counted and retried with backoff;
nothing from it is stored; every request is bounded in time and size; SIGTERM stops the loader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from loader.changes import apply_change_files
from loader.follow import FollowOptions
from loader.quarantine import Quarantine
from loader.snapshot import load_snapshot
from tests.integration.follower import Follower, cursor
from tests.integration.registry import period, write_snapshot
from tests.servers import RedisServer

CLI = Path(sys.executable).parent / "gatekeeper-loader"
WATERMARK = 100
CODE = "D510105000123"
# Fast polling and backoff, so a test sees many rounds within a second or two.
FAST = FollowOptions(
    limit=50, poll_seconds=0.02, timeout_seconds=1.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2
)
BOUND_SECONDS = 8.0  # no test waits longer than this for anything

Respond = Callable[["_Handler", int], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    respond: Respond
    closing: threading.Event
    requests: list[tuple[float, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests.append((time.monotonic(), self.path))
        after = int(parse_qs(urlsplit(self.path).query).get("after", ["0"])[0])
        with contextlib.suppress(OSError):  # the client gave up on us: what the test wants
            self.server.respond(self, after)

    def send_json(self, document: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HostileFeed:
    """A threaded HTTP server on 127.0.0.1 port 0 answering with ``respond(handler, after)``.
    Every scripted misbehaviour ends once ``closing`` is set, so a test is bounded even
    against a client that never gives up."""

    def __init__(self, respond: Respond) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.respond = respond
        self._server.closing = self.closing = threading.Event()
        self._server.requests = self.requests = []
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Respond], HostileFeed]]:
    started: list[HostileFeed] = []

    def start(respond: Respond) -> HostileFeed:
        feed = HostileFeed(respond)
        started.append(feed)
        return feed

    yield start
    for feed in started:
        feed.stop()


@pytest.fixture
def loaded(redis_client: redis.Redis, tmp_path: Path) -> redis.Redis:
    rows = [period(CODE, "reg-1", 1, "2020-01-01 00:00:00", seq=WATERMARK)]
    load_snapshot(redis_client, write_snapshot(tmp_path, rows, watermark_seq=WATERMARK))
    return redis_client


def change(seq: int, **fields: object) -> dict[str, object]:
    """A valid suspension change of CODE with ``seq``."""
    record: dict[str, object] = {
        **period(CODE, f"susp-{seq}", 2, "2026-01-01 00:00:00", "2026-03-01 00:00:00", seq=seq, chg_rea="points"),
        "seq": seq,
    }
    record.update(fields)
    return record


def start_follower(port: int, url: str, quarantine: Path, options: FollowOptions = FAST) -> Follower:
    """``follow`` with this module's fast options; it must stop within 3 s of being told to."""
    return Follower(port, url, quarantine, options, stop_within=3.0)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pages(*answers: dict[str, object]) -> Respond:
    """Answer the n-th request with the n-th page; afterwards, an empty caught-up page."""
    queue = list(answers)

    def respond(handler: _Handler, after: int) -> None:
        handler.send_json(queue.pop(0) if queue else {"changes": [], "next_after": after, "has_more": False})

    return respond


# --- 1. a change the store cannot encode --------------------------------------------------


def test_a_change_with_a_lone_surrogate_is_quarantined_by_follow_and_apply_alike(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    bad = change(WATERMARK + 1, chg_rea="\ud800")  # json.dumps writes it as the escape \ud800
    good = change(WATERMARK + 2)
    feed = hostile(pages({"changes": [bad, good], "next_after": WATERMARK + 2, "has_more": False}))
    follower = start_follower(redis_server.port, feed.url, tmp_path / "follow.q.jsonl")
    wait_until(lambda: cursor(loaded) == WATERMARK + 2, "follow to move past the page")
    stats = follower.stop()
    assert (stats.applied.applied, stats.bad_rows) == (1, 1)

    changes = tmp_path / "changes-101-102.jsonl"
    changes.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    quarantine = Quarantine(tmp_path / "apply.q.jsonl")
    try:
        result = apply_change_files(loaded, [changes], quarantine)
    finally:
        quarantine.close()
    assert result.bad_rows == 1
    (followed,) = [json.loads(line) for line in (tmp_path / "follow.q.jsonl").read_text("utf-8").splitlines()]
    (applied,) = [json.loads(line) for line in (tmp_path / "apply.q.jsonl").read_text("utf-8").splitlines()]
    assert followed["reason"].split(": {")[0] == applied["reason"]
    assert "chg_rea" in applied["reason"]


def test_a_page_with_bytes_that_are_not_utf8_is_read_like_a_change_file(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    body = json.dumps(
        {"changes": [change(WATERMARK + 1, chg_rea="@@")], "next_after": WATERMARK + 1, "has_more": False}
    )
    raw = body.encode().replace(b"@@", b"\xff\xfe")
    served = threading.Event()

    def respond(handler: _Handler, after: int) -> None:
        if served.is_set():
            handler.send_json({"changes": [], "next_after": after, "has_more": False})
            return
        served.set()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    follower = start_follower(redis_server.port, hostile(respond).url, tmp_path / "q.jsonl")
    wait_until(lambda: cursor(loaded) == WATERMARK + 1, "follow to apply the page")
    assert follower.stop().applied.applied == 1


# --- 2. paging ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("next_after", "why"),
    [
        (10**15, "beyond"),  # would skip every real change for good
        (WATERMARK - 50, "before"),  # would go backwards
        (WATERMARK + 1, "below"),  # below a change the page holds: the next page repeats it
    ],
)
def test_a_page_whose_next_after_does_not_match_what_it_holds_is_refused_and_never_stored(
    loaded: redis.Redis,
    redis_server: RedisServer,
    hostile: Callable[[Respond], HostileFeed],
    tmp_path: Path,
    next_after: int,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = {"changes": [change(WATERMARK + 1), change(WATERMARK + 2)], "next_after": next_after, "has_more": False}
    feed = hostile(lambda handler, after: handler.send_json(page))
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl")
    wait_until(lambda: len(feed.requests) >= 4, "follow to retry")  # the 4th may be cut short by stop
    stats = follower.stop()
    assert cursor(loaded) in (0, WATERMARK)  # never stored
    assert stats.after == WATERMARK
    assert stats.refused_pages >= 3 and stats.errors >= 3
    assert stats.applied.applied == 0  # nothing of a refused page is applied
    assert any("next_after" in message and why in message for message in caplog.messages)


def test_an_empty_page_may_not_move_the_cursor(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    feed = hostile(
        lambda handler, after: handler.send_json({"changes": [], "next_after": after + 10**6, "has_more": False})
    )
    stats = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl").run_for(0.5)
    assert cursor(loaded) in (0, WATERMARK)
    assert stats.refused_pages >= 1


def test_a_valid_page_moves_the_cursor_to_its_last_change(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    feed = hostile(
        pages(
            {"changes": [change(WATERMARK + 3), change(WATERMARK + 7)], "next_after": WATERMARK + 7, "has_more": False}
        )
    )
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl")
    wait_until(lambda: cursor(loaded) == WATERMARK + 7, "the cursor to move")
    stats = follower.stop()
    assert (stats.applied.applied, stats.refused_pages) == (2, 0)


# --- 3. a misbehaving server -------------------------------------------------------------


def drip(handler: _Handler, after: int) -> None:
    """Promise a page, then send it one byte every 0.3 s (each read is quick; the whole never ends)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    while not handler.server.closing.wait(0.3):
        handler.wfile.write(b" ")
        handler.wfile.flush()


def test_a_dripping_response_is_cut_off_at_the_total_request_time(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    feed = hostile(drip)
    started = time.monotonic()
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl")
    wait_until(lambda: len(feed.requests) >= 2, "a second request (the first timed out)")
    assert time.monotonic() - started < 1.0 + 2.0  # timeout_seconds=1, plus slack for a busy machine
    stats = follower.stop()
    assert stats.errors >= 1


def test_follow_stops_within_a_bound_on_sigterm_while_a_response_drips(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    feed = hostile(drip)
    env = {**os.environ, "REDIS_URL": redis_server.url}
    process = subprocess.Popen(
        [str(CLI), "follow", feed.url, "--quarantine", "q.jsonl"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(feed.requests) >= 1 or process.poll() is not None, "the request")
        time.sleep(0.5)  # into the drip
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        stdout, stderr = process.communicate(timeout=BOUND_SECONDS)
        assert time.monotonic() - stopped < 2.0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "stopped after seq" in stdout
    assert "Traceback" not in stderr


def test_an_endless_body_is_cut_off_at_the_page_size_cap(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    chunk = b"[" * 65536

    def endless(handler: _Handler, after: int) -> None:
        handler.send_response(200)
        handler.end_headers()  # no length: the body ends when the connection does
        while not handler.server.closing.is_set():
            handler.wfile.write(chunk)

    feed = hostile(endless)
    options = FollowOptions(
        limit=50, poll_seconds=0.02, timeout_seconds=5.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2
    )
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl", options)
    wait_until(lambda: len(feed.requests) >= 2, "a second request (the first was cut off)")
    stats = follower.stop()
    assert stats.errors >= 1


def test_has_more_without_progress_backs_off_instead_of_spinning(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    feed = hostile(lambda handler, after: handler.send_json({"changes": [], "next_after": after, "has_more": True}))
    stats = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl").run_for(1.5)
    # Backing off from 0.05 s doubling to 0.2 s (full jitter) allows at most a few dozen.
    assert stats.requests <= 60, f"{stats.requests} requests in 1.5 s"
    assert stats.refused_pages >= 1


def test_a_redirect_to_another_origin_is_refused_and_its_data_never_applied(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    elsewhere = hostile(pages({"changes": [change(WATERMARK + 1)], "next_after": WATERMARK + 1, "has_more": False}))

    def redirect(handler: _Handler, after: int) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"{elsewhere.url}{handler.path}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    feed = hostile(redirect)
    follower = start_follower(redis_server.port, feed.url, tmp_path / "q.jsonl")
    wait_until(lambda: len(feed.requests) >= 2, "a retry")
    stats = follower.stop()
    assert elsewhere.requests == []
    assert cursor(loaded) in (0, WATERMARK)
    assert stats.applied.applied == 0 and stats.errors >= 1


def test_a_redirect_within_the_origin_is_followed(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    page = {"changes": [change(WATERMARK + 1)], "next_after": WATERMARK + 1, "has_more": False}

    def respond(handler: _Handler, after: int) -> None:
        if handler.path.startswith("/moved/"):
            handler.send_json(
                page if after < WATERMARK + 1 else {"changes": [], "next_after": after, "has_more": False}
            )
            return
        handler.send_response(307)
        handler.send_header("Location", f"/moved{handler.path}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    follower = start_follower(redis_server.port, hostile(respond).url, tmp_path / "q.jsonl")
    wait_until(lambda: cursor(loaded) == WATERMARK + 1, "the redirected page")
    assert follower.stop().applied.applied == 1


# --- 6. the quarantine report ------------------------------------------------------------


def run_follow_command(url: str, redis_url: str, cwd: Path, until: Callable[[], bool]) -> str:
    """``gatekeeper-loader follow`` until ``until()``, then SIGTERM; its stdout."""
    env = {**os.environ, "REDIS_URL": redis_url}
    command = [str(CLI), "follow", url, "--poll", "0.05", "--quarantine", "q.jsonl"]
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: until() or process.poll() is not None, "follow to get there")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=BOUND_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    return stdout


def test_the_follow_command_appends_to_its_quarantine_report_across_restarts(
    loaded: redis.Redis, redis_server: RedisServer, hostile: Callable[[Respond], HostileFeed], tmp_path: Path
) -> None:
    for seq in (WATERMARK + 1, WATERMARK + 2):
        feed = hostile(pages({"changes": [change(seq, status="9")], "next_after": seq, "has_more": False}))
        stdout = run_follow_command(feed.url, redis_server.url, tmp_path, lambda seq=seq: cursor(loaded) == seq)
        assert "1 bad" in stdout
        feed.stop()
    entries = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text("utf-8").splitlines()]
    assert [entry["line"] for entry in entries] == [WATERMARK, WATERMARK + 1]
    assert all("status" in entry["reason"] for entry in entries)


def test_the_follow_command_refuses_a_url_that_is_not_http_in_one_line(
    loaded: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    result = subprocess.run(
        [str(CLI), "follow", "ftp://127.0.0.1/feed"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "is not an http:// or https:// URL" in result.stderr
