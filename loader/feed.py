"""The registry's HTTP change feed (REGISTRY_FORMAT.md §2): a demo server over change files, and page parsing."""

from __future__ import annotations

import bisect
import ipaddress
import json
import os
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from loader.rows import MAX_SEQ

CHANGES_PATH = "/v1/changes"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# How often serve_forever looks for a stop request: stop() waits up to this long.
_POLL_SECONDS = 0.05


class MalformedPage(ValueError):
    """A change-feed answer that is not in the registry's format."""


@dataclass(frozen=True)
class FeedPage:
    """One answer of ``GET /v1/changes``; the changes are the JSON objects as sent."""

    changes: list[dict[str, Any]]
    next_after: int
    has_more: bool


def changes_url(base_url: str, after: int, limit: int = DEFAULT_LIMIT) -> str:
    """The URL of the page of changes after ``after`` on a feed at ``base_url``."""
    return f"{base_url.rstrip('/')}{CHANGES_PATH}?{urlencode({'after': after, 'limit': limit})}"


def parse_page(body: bytes | str) -> FeedPage:
    """Check and unpack the body of a ``GET /v1/changes`` answer; MalformedPage if malformed."""
    if isinstance(body, bytes):
        # As change files are read: an undecodable byte becomes U+FFFD and fails that change
        # only, not the page (which would stop `follow` at this cursor for good).
        body = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(body)
    except ValueError as error:
        raise MalformedPage(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise MalformedPage("the answer is not a JSON object")
    changes, next_after, has_more = document.get("changes"), document.get("next_after"), document.get("has_more")
    # Each change is checked by the follower, which quarantines a bad one and goes on.
    if not isinstance(changes, list):
        raise MalformedPage("changes is not a list")
    # bool is an int in Python; a registry that sends true as next_after is broken.
    if not isinstance(next_after, int) or isinstance(next_after, bool) or next_after < 0:
        raise MalformedPage(f"next_after {next_after!r} is not a non-negative integer")
    if not isinstance(has_more, bool):
        raise MalformedPage(f"has_more {has_more!r} is not true or false")
    return FeedPage(changes, next_after, has_more)


def check_paging(page: FeedPage, after: int) -> None:
    """MalformedPage unless the page's paging matches what it holds and what was asked for.

    The cursor may only move to what the page proves: ``next_after`` must equal the highest
    seq of a change in the page (or ``after`` when it holds none with a readable seq) and
    never be below ``after``. Beyond it would skip changes never seen, for good; below, the
    next page repeats or goes backwards. ``has_more`` with a cursor that does not move would
    ask the same question again at once, forever.
    """
    next_after = page.next_after
    if next_after < after:
        raise MalformedPage(f"next_after {next_after} is before after={after}: it would go backwards")
    # A seq the loader refuses (above 2**53) proves nothing either.
    seqs = [seq for seq in map(_seq_of, page.changes) if seq is not None and seq <= MAX_SEQ]
    highest = max(seqs, default=after)
    if next_after < highest:
        raise MalformedPage(f"next_after {next_after} is below seq {highest} of a change in the page")
    if next_after > max(after, highest):
        raise MalformedPage(
            f"next_after {next_after} is beyond the page's last seq {max(after, highest)}: "
            "it would skip changes never seen"
        )
    if page.has_more and next_after == after:
        raise MalformedPage(f"has_more is true but next_after stays at {after}")


def _seq_of(change: object) -> int | None:
    if not isinstance(change, dict):
        return None
    seq = change.get("seq")
    if isinstance(seq, str) and seq.isascii() and seq.isdigit():
        return int(seq)
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
        return seq
    return None


# (directory mtime, (name, size, mtime) of each change file): what the index was read from.
_Signature = tuple[int, tuple[tuple[str, int, int], ...]]


class _ChangeIndex:
    """The changes of a directory's *.jsonl files in seq order, re-read when the files change."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._seqs: list[int] = []
        self._changes: list[dict[str, Any]] = []

    def _current_signature(self) -> _Signature:
        # The directory's mtime catches new and removed files; sizes and mtimes of the files
        # catch a file that was still being written when it was last read.
        files: list[tuple[str, int, int]] = []
        with os.scandir(self._directory) as entries:
            for entry in entries:
                if entry.name.endswith(".jsonl") and entry.is_file():
                    status = entry.stat()
                    files.append((entry.name, status.st_size, status.st_mtime_ns))
        return os.stat(self._directory).st_mtime_ns, tuple(sorted(files))

    def _read(self, names: list[str]) -> None:
        by_seq: dict[int, dict[str, Any]] = {}
        for name in names:
            with (self._directory / name).open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        change = json.loads(line)
                    except ValueError:
                        continue  # blank, or a last line still being written
                    seq = _seq_of(change)
                    # Delivery is at-least-once: a change in two files is served once.
                    if seq is not None and seq not in by_seq:
                        by_seq[seq] = change
        self._seqs = sorted(by_seq)
        self._changes = [by_seq[seq] for seq in self._seqs]

    def page(self, after: int, limit: int) -> FeedPage:
        with self._lock:
            signature = self._current_signature()
            if signature != self._signature:
                self._read([name for name, _, _ in signature[1]])
                self._signature = signature
            start = bisect.bisect_right(self._seqs, after)
            changes = self._changes[start : start + limit]
            has_more = start + limit < len(self._changes)
        return FeedPage(changes, self._seq_after(changes, after), has_more)

    @staticmethod
    def _seq_after(changes: list[dict[str, Any]], after: int) -> int:
        if not changes:
            return after
        last = _seq_of(changes[-1])
        assert last is not None  # only changes with a seq are indexed
        return last


class _FeedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], index: _ChangeIndex, fail_every: int) -> None:
        self.index = index
        self.fail_every = fail_every
        self._requests = 0
        self._count_lock = threading.Lock()
        super().__init__(address, _FeedHandler)

    def injected_failure(self) -> bool:
        """True when this request is an n-th one that fault injection answers with 503."""
        if not self.fail_every:
            return False
        with self._count_lock:
            self._requests += 1
            return self._requests % self.fail_every == 0


class _FeedHTTPServer6(_FeedHTTPServer):
    address_family = socket.AF_INET6


def _query_int(query: dict[str, list[str]], name: str, default: int, minimum: int) -> int:
    values = query.get(name)
    if values is None:
        return default
    if len(values) != 1:
        raise ValueError(f"{name} is given more than once")
    text = values[0]
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {text[:20]!r}")
    return int(text)


class _FeedHandler(BaseHTTPRequestHandler):
    server: _FeedHTTPServer

    def do_GET(self) -> None:
        if self.server.injected_failure():
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "injected failure"})
            return
        url = urlsplit(self.path)
        if url.path != CHANGES_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path[:100]!r}; try {CHANGES_PATH}"})
            return
        try:
            query = parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
            after = _query_int(query, "after", 0, 0)
            # Asking for more than the maximum is not an error: the client simply pages on.
            limit = min(_query_int(query, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
        except ValueError as error:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        page = self.server.index.page(after, limit)
        self._answer(HTTPStatus.OK, {"changes": page.changes, "next_after": page.next_after, "has_more": page.has_more})

    def _answer(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and demos read their own output, not an access log


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ChangeFeedServer:
    """``GET /v1/changes?after=&limit=`` over the *.jsonl change files of a directory.

    Binds in the constructor (``port=0`` picks a free port), so it accepts connections as soon
    as it exists; ``start()`` serves from a daemon thread. ``fail_every=n`` answers every n-th
    request with 503, to test a client's retries. A demo server: it refuses addresses other
    than loopback unless ``allow_non_loopback`` is set.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_every: int = 0,
        allow_non_loopback: bool = False,
    ) -> None:
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is not a directory")
        if fail_every < 0:
            raise ValueError("fail_every must not be negative")
        if not allow_non_loopback and not is_loopback(host):
            raise ValueError(f"{host} is not a loopback address; this demo server only serves this machine")
        server_class = _FeedHTTPServer6 if ":" in host else _FeedHTTPServer
        self._server = server_class((host, port), _ChangeIndex(directory), fail_every)
        self._host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8808``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Serve from a daemon thread; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(_POLL_SECONDS,), name="change-feed", daemon=True
            )
            self._thread.start()

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` or KeyboardInterrupt."""
        self._server.serve_forever(_POLL_SECONDS)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ChangeFeedServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def publish_later(changes: Path, directory: Path, after_seconds: float) -> threading.Timer:
    """Copy the change file ``changes`` into the feed's ``directory`` in ``after_seconds`` (a
    daemon timer, already started): the demo's suspension, published while it runs. The copy
    appears whole (written aside, then renamed), so the feed never serves half of it."""
    data = changes.read_bytes()  # now: a missing file is a mistake at start, not a minute later
    count = sum(1 for line in data.splitlines() if line.strip())

    def publish() -> None:
        aside = directory / f".{changes.name}.publishing"
        aside.write_bytes(data)
        os.replace(aside, directory / changes.with_suffix(".jsonl").name)
        print(f"published {count} change(s) from {changes} on the feed", flush=True)

    timer = threading.Timer(after_seconds, publish)
    timer.daemon = True
    timer.start()
    return timer


def serve_feed(
    directory: Path,
    host: str = "127.0.0.1",
    port: int = 8808,
    *,
    allow_non_loopback: bool = False,
    publish: Path | None = None,
    publish_after: float = 60.0,
) -> None:
    """Serve the change files of ``directory`` in the foreground until Ctrl-C or SIGTERM; with
    ``publish``, copy that change file into it ``publish_after`` seconds in."""
    server = ChangeFeedServer(directory, host=host, port=port, allow_non_loopback=allow_non_loopback)
    print(f"serving the change files of {directory} at {server.url}{CHANGES_PATH} (Ctrl-C to stop)", flush=True)
    timer = None
    if publish is not None:
        timer = publish_later(publish, directory, publish_after)
        print(f"publishing {publish} in {publish_after:g} s", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        server.stop()
