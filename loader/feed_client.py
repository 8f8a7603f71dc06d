"""One bounded GET of the registry's change feed: one origin, a total deadline, a size cap."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

DEFAULT_TIMEOUT_SECONDS = 10.0  # a whole request: connect, headers and body
DEFAULT_MAX_PAGE_BYTES = 16 * 1024 * 1024  # 1,000 changes of the largest allowed size fit 5 times over
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_WATCH_SECONDS = 0.05  # how often the watchdog looks at the deadline and the stop event
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


class FeedError(RuntimeError):
    """The feed answered something other than a page of changes, or not in time."""


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; FeedError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise FeedError(f"{url[:200]!r} is not an http:// or https:// URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise FeedError(f"{url[:200]!r} has an invalid port") from None
    return scheme, parts.hostname.lower(), port


class _Watchdog:
    """Shuts the request's socket down when the deadline passes or ``stop`` is set: a socket
    timeout bounds each read, not a response that drips a byte every few seconds."""

    def __init__(self, connection: http.client.HTTPConnection, deadline: float, stop: threading.Event) -> None:
        self._connection = connection
        self._deadline = deadline
        self._stop = stop
        self._done = threading.Event()
        self.fired: str | None = None
        self._thread = threading.Thread(target=self._watch, name="feed-request-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(_WATCH_SECONDS):
            if self._stop.is_set():
                self.fired = "stopped"
            elif time.monotonic() >= self._deadline:
                self.fired = "timed out"
            else:
                continue
            sock = self._connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes the blocked read
            return

    def cancel(self) -> None:
        self._done.set()
        self._thread.join()


def _get_once(url: str, deadline: float, max_bytes: int, stop: threading.Event) -> tuple[int, str | None, bytes]:
    """(status, Location of a redirect or None, body of a 200)."""
    scheme, host, port = origin_of(url)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FeedError("timed out")
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=remaining)
    watchdog = _Watchdog(connection, deadline, stop)
    try:
        connection.request("GET", target, headers={"Accept": "application/json", "Accept-Encoding": "identity"})
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            return response.status, response.getheader("Location") or "", b""
        if response.status != 200:
            raise FeedError(f"HTTP {response.status} {response.reason[:100]}")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise FeedError(f"the page has {int(declared):,} bytes, more than the limit of {max_bytes:,}")
        body = bytearray()
        while chunk := response.read(_CHUNK):
            body += chunk
            if len(body) > max_bytes:
                raise FeedError(f"the page is larger than the limit of {max_bytes:,} bytes")
        return response.status, None, bytes(body)
    except (OSError, http.client.HTTPException) as error:
        if watchdog.fired == "timed out":
            raise FeedError("no complete answer in time") from None
        if watchdog.fired == "stopped":
            raise FeedError("stopped") from None
        raise FeedError(f"{type(error).__name__}: {error}") from None
    finally:
        watchdog.cancel()
        connection.close()


def get_page(url: str, *, timeout: float, max_bytes: int, stop: threading.Event) -> bytes:
    """The body of ``GET url``, within ``timeout`` seconds in all (redirects included) and
    ``max_bytes``; redirects are followed only within the URL's origin. FeedError otherwise,
    also as soon as ``stop`` is set."""
    origin = origin_of(url)
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get_once(url, deadline, max_bytes, stop)
        if location is None:
            return body
        target = urljoin(url, location)
        if origin_of(target) != origin:
            scheme, host, port = origin_of(target)
            raise FeedError(f"HTTP {status} redirect to {scheme}://{host}:{port}, another origin: refused")
        url = target
    raise FeedError(f"more than {MAX_REDIRECTS} redirects")
