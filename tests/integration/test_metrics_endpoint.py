"""The metrics endpoint against raw sockets: GET /metrics only, bounded connections, a read deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gatekeeper.ops.metrics import MetricsEndpoint
from tests.integration.conftest import StartGatekeeper, exchange

WAIT_SECONDS = 10.0


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def half_sent() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_only_get_metrics_is_answered(start_gatekeeper: StartGatekeeper) -> None:
    gatekeeper = start_gatekeeper(metrics_listen="127.0.0.1:0")
    assert gatekeeper.metrics_port is not None
    port = gatekeeper.metrics_port
    scraped = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(scraped) == 200 and b"gatekeeper_serving" in scraped
    assert status_of(exchange(port, b"GET /metrics?name[]=x HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
    assert status_of(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    assert status_of(exchange(port, b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    posted = exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status_of(posted) == 405 and b"Allow: GET" in posted
    assert status_of(exchange(port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) == 405


def test_half_sent_requests_do_not_take_a_thread_each(
    start_gatekeeper: StartGatekeeper, half_sent: list[socket.socket]
) -> None:
    gatekeeper = start_gatekeeper(metrics_listen="127.0.0.1:0")
    assert gatekeeper.metrics_port is not None
    threads = threading.active_count()
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", gatekeeper.metrics_port), timeout=WAIT_SECONDS)
        sock.sendall(b"GET /metr")
        half_sent.append(sock)
    time.sleep(0.5)  # what is measured is that nothing grows in this time: no event to wait on
    assert threading.active_count() <= threads + 1


def test_connections_are_bounded_and_each_must_send_its_request_in_time(half_sent: list[socket.socket]) -> None:
    endpoint = MetricsEndpoint("127.0.0.1", 0, max_connections=4, read_seconds=0.5)
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=WAIT_SECONDS)
            sock.sendall(b"GET /metr")
            half_sent.append(sock)
        # The fifth is closed unanswered while four are open (reset: its request was not read).
        with contextlib.suppress(ConnectionResetError):
            assert exchange(endpoint.port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
        # Each half-sent connection is closed by the server once its read time is over.
        started = time.monotonic()
        for sock in half_sent:
            assert sock.recv(65536) == b""  # EOF, not the socket's own 10 s timeout
        assert time.monotonic() - started < 5
        assert status_of(exchange(endpoint.port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
    finally:
        asyncio.run(endpoint.close())
