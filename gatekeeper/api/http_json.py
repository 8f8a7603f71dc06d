"""The JSON-over-HTTP door: CheckClaim, CheckClaims and GetPractitioner as HTTP/1.1 POSTs.

For HIS that cannot speak gRPC. Bodies are the proto's JSON mapping with the original
snake_case field names (``google.protobuf.json_format``); each request goes through the
servicer's own decision path (validation, decision, record, caller binding), in the same
worker process, without a gRPC hop. The limits are gRPC's: the same concurrency slots
(shared with gRPC in the worker), the method's byte limit on the body, the time a request
has to arrive, a caller's deadline (``X-Server-Timeout``, seconds). HTTP/1.1 is spoken by
h11 on asyncio streams: one request at a time per connection, keep-alive, pipelining
answered in order.

| path | method |
|---|---|
| ``POST /v1/claims:check`` | CheckClaim |
| ``POST /v1/claims:checkBatch`` | CheckClaims |
| ``POST /v1/practitioners:get`` | GetPractitioner |
| ``GET /v1/health`` | 200 while health is SERVING, else 503 |

An error is ``{"error": {"code": <HTTP status>, "status": "<gRPC status name>", "message":
"...", "field": "..."}}`` (``field`` for INVALID_ARGUMENT), the status mapped as google.rpc.Code
maps it to HTTP (:data:`HTTP_STATUS`), plus 413 for a body over the limit, 408 for a request
not received in time, 404, 405 and 415 for a request that is not one of the above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
from google.protobuf.message import Message

from gatekeeper.api.admission import Admission
from gatekeeper.api.callers import caller_from_certificate
from gatekeeper.api.json_mapping import from_json, to_json
from gatekeeper.api.servicer import CallerOf, GatekeeperServicer, new_decision_id
from gatekeeper.api.validation import Limits
from gatekeeper.core.errors import GatekeeperError, InvalidArgument
from gatekeeper.ops import metrics
from gatekeeper.v1 import gatekeeper_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Gatekeeper"]
# Paths in the style of Google's custom methods (AIP-136): a noun, then ":verb".
PATHS = {
    "CheckClaim": "/v1/claims:check",
    "CheckClaims": "/v1/claims:checkBatch",
    "GetPractitioner": "/v1/practitioners:get",
}
HEALTH_PATH = "/v1/health"
DEADLINE_HEADER = "x-server-timeout"  # seconds, as Google's JSON APIs take it

# google.rpc.Code's own mapping to HTTP (google/rpc/code.proto), for the statuses the
# gatekeeper answers with; the body's "status" is the gRPC name, the same as gRPC callers see.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
JSON_TYPE = b"application/json; charset=utf-8"
# A request's line and headers together; more is 431-worthy garbage, answered 400 and closed.
MAX_HEAD_BYTES = 16 * 1024
READ_BYTES = 64 * 1024


def error_body(http_status: int, status: str, message: str, field: str = "") -> bytes:
    """The JSON body of an error: Google's JSON error form, with the field named."""
    error: dict[str, Any] = {"code": http_status, "status": status, "message": message}
    if field:
        error["field"] = field
    return json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()


# --- The door: HTTP/1.1 on asyncio streams ---------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP response: status, its gRPC status name, JSON body, extra headers, and whether
    to close the connection after it (a request whose body was not read, say)."""

    status: int
    code: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    close: bool = False


def _failure(error: GatekeeperError, *, status: int | None = None, close: bool = False) -> Answer:
    http_status = status or HTTP_STATUS.get(error.status, 500)
    field = error.field if isinstance(error, InvalidArgument) else ""
    headers = ((b"retry-after", b"1"),) if http_status in (429, 503) else ()
    body = error_body(http_status, error.status, str(error), field)
    return Answer(http_status, error.status, body, headers, close)


class Refused(GatekeeperError):
    """A request refused before any work, with the status its gRPC twin would get."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class TooLarge(InvalidArgument):
    """A body over its route's byte limit (413): the words gRPC's size check uses."""

    def __init__(self, size: str, most: int, batch: bool) -> None:
        what = " for a batch" if batch else ""
        super().__init__("request", f"is {size} bytes, more than the maximum of {most}{what}")


class _RequestTimedOut(Exception):
    """No request began within the idle time, or one did not arrive in full within the read timeout."""


Decide = Callable[[Any, CallerOf, str], Awaitable[Message]]


@dataclass(frozen=True)
class Route:
    """One POST path: the RPC it stands for, its request type, its body limit, how to decide."""

    method: str  # gatekeeper.v1.Gatekeeper/CheckClaim: the label its duration is timed under
    refused_as: str  # "POST /v1/claims:check": the label its refusals are counted under
    request_type: type[Message]
    max_body_bytes: int
    for_batch: bool
    decide: Decide


def routes(servicer: GatekeeperServicer, limits: Limits) -> dict[str, Route]:
    """The door's POST paths, each to the servicer's own decision path."""
    decide: dict[str, Decide] = {
        "CheckClaim": servicer.check_claim,
        "CheckClaims": lambda request, caller, _decision_id: servicer.check_claims(request, caller),
        "GetPractitioner": lambda request, caller, _decision_id: servicer.get_practitioner(request, caller),
    }
    table = {}
    for method in SERVICE.methods:
        batch = method.name == "CheckClaims"
        path = PATHS[method.name]
        table[path] = Route(
            f"{SERVICE.full_name}/{method.name}",
            f"POST {path}",
            getattr(pb, method.input_type.name),
            limits.max_batch_bytes if batch else limits.max_request_bytes,
            batch,
            decide[method.name],
        )
    return table


# Linux only. Many clients send a request's head and body in two writes with Nagle's algorithm
# on (Java's HttpURLConnection; h2load --h1): the body waits for the ACK of the head, which the
# kernel delays up to 40 ms, since the server has nothing to send yet. Asking for quick ACKs
# after each read (the kernel turns the mode off again by itself) removes the stall.
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _Incoming:
    """One connection's side of HTTP/1.1: h11's state, and the time its current request has to arrive."""

    def __init__(self, reader: asyncio.StreamReader, sock: Any, idle_seconds: float, read_seconds: float) -> None:
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._reader = reader
        self._quickack = sock if _QUICKACK is not None and sock is not None else None
        self._idle_seconds = idle_seconds
        self._read_seconds = read_seconds
        self._deadline = 0.0

    async def next_event(self, *, waiting: bool = False) -> Any:
        """The next h11 event, reading as needed. ``waiting`` for a new request, the connection
        may sit idle for ``idle_seconds``; from its request's first bytes on, the rest (head
        and body) must arrive within the read timeout, as a gRPC request must."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + self._idle_seconds if waiting else self._deadline) as limit:
                while True:
                    event = self.http.next_event()
                    if event is not h11.NEED_DATA:
                        if waiting:  # a pipelined request, already buffered: its time starts now
                            self._deadline = loop.time() + self._read_seconds
                        return event
                    data = await self._reader.read(READ_BYTES)
                    if self._quickack is not None:
                        with contextlib.suppress(OSError):
                            self._quickack.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    if waiting:
                        waiting = False
                        self._deadline = loop.time() + self._read_seconds
                        limit.reschedule(self._deadline)
                    self.http.receive_data(data)
        except TimeoutError:
            raise _RequestTimedOut() from None

    async def body(self, most: int, route: Route | None = None) -> bytes:
        """The rest of the request: its body, at most ``most`` bytes (TooLarge beyond)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > most:
                    raise TooLarge(f"at least {size}", most, route is not None and route.for_batch)
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed before the end of the body
                raise ConnectionResetError("the request body ended early")


class HttpDoor:
    """Serves the JSON-over-HTTP door on a listening socket, beside the gRPC server."""

    def __init__(
        self,
        servicer: GatekeeperServicer,
        admission: Admission,
        limits: Limits,
        *,
        serving: Callable[[], bool],
        request_read_seconds: float,
        max_connection_age_seconds: float,
        idle_seconds: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._routes = routes(servicer, limits)
        self._admission = admission
        self._serving = serving
        self._read_seconds = request_read_seconds
        self._max_age = max_connection_age_seconds
        self._idle_seconds = idle_seconds
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._idle: set[asyncio.Task[None]] = set()  # connections waiting for their next request
        self._busy: set[asyncio.Task[None]] = set()  # connections reading, deciding or answering
        self._closing = False
        self.port = 0

    async def bind(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind and listen (port 0 picks a free port); requests are served after :meth:`start`."""
        self._server = await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=self._ssl,
            ssl_handshake_timeout=self._read_seconds if self._ssl else None,
            reuse_port=reuse_port or None,
            start_serving=False,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def start(self) -> None:
        """Start accepting connections."""
        if self._server is None:
            raise RuntimeError("HttpDoor.bind() first")
        await self._server.start_serving()

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle connections are closed at once, requests in progress get
        ``grace`` seconds to be answered (with ``Connection: close``), then are cut."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._idle):
            task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=grace)
        remaining = self._idle | self._busy
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.wait(list(remaining))
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback runs as a task
        self._idle.add(task)
        incoming = _Incoming(reader, writer.get_extra_info("socket"), self._idle_seconds, self._read_seconds)
        ssl_object = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        opened = time.monotonic()
        try:
            while not self._closing:
                try:
                    event = await incoming.next_event(waiting=True)
                except _RequestTimedOut:
                    break  # idle, or a head that never ended: closed without a word
                if not isinstance(event, h11.Request):
                    break  # ConnectionClosed
                self._idle.discard(task)
                self._busy.add(task)
                answer = await self._answer(incoming, writer, event, lambda: caller_from_certificate(certificate))
                close = answer.close or self._closing or time.monotonic() - opened >= self._max_age
                await self._send(incoming.http, writer, answer, close)
                if incoming.http.our_state is h11.MUST_CLOSE or incoming.http.their_state is not h11.DONE:
                    break
                incoming.http.start_next_cycle()
                self._busy.discard(task)
                self._idle.add(task)
        except h11.RemoteProtocolError as error:
            # Not HTTP/1.1, or a head over MAX_HEAD_BYTES: say so when an answer can still be sent.
            if incoming.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                refused = InvalidArgument("request", f"not an HTTP/1.1 request ({error})")
                with contextlib.suppress(Exception):
                    await self._send(incoming.http, writer, _failure(refused, close=True), True)
        except (ConnectionError, TimeoutError, h11.LocalProtocolError, ssl.SSLError):
            pass  # the peer went away, or stopped reading its answer: nobody to tell
        finally:
            self._idle.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, incoming: _Incoming, writer: asyncio.StreamWriter, request: h11.Request, caller: CallerOf
    ) -> Answer:
        """Read, decide and time one request: every outcome is an Answer."""
        started = time.perf_counter()
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        route = self._routes.get(target)
        if target == HEALTH_PATH and request.method == b"GET":
            try:
                await incoming.body(0)
            except TooLarge as error:  # a health check carries no body
                return _failure(error, status=413, close=True)
            except _RequestTimedOut:
                late = Refused("DEADLINE_EXCEEDED", f"request: not received in full within {self._read_seconds:g} s")
                return _failure(late, status=408, close=True)
            serving = self._serving()
            body = b'{"status":"SERVING"}' if serving else b'{"status":"NOT_SERVING"}'
            return Answer(200 if serving else 503, "OK" if serving else "UNAVAILABLE", body)
        if route is None:
            known = ", ".join([*self._routes, HEALTH_PATH])
            message = f"{target[:100]}: not a path of this service ({known})"
            return Answer(404, "NOT_FOUND", error_body(404, "NOT_FOUND", message), close=True)
        answer = await self._post(incoming, writer, request, route, target, caller)
        metrics.observe_http(route.method, answer.code, time.perf_counter() - started)
        return answer

    async def _post(
        self,
        incoming: _Incoming,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        route: Route,
        target: str,
        caller: CallerOf,
    ) -> Answer:
        """A request to one of the routes: checked, admitted, read and decided."""
        if request.method != b"POST":
            body = error_body(405, "INVALID_ARGUMENT", f"{target}: only POST", "request")
            return Answer(405, "INVALID_ARGUMENT", body, ((b"allow", b"POST"),), close=True)
        headers = dict(request.headers)
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if content_type != b"application/json":
            refused = InvalidArgument("request", "expected Content-Type: application/json")
            return _failure(refused, status=415, close=True)
        try:
            deadline = self._deadline(headers.get(DEADLINE_HEADER.encode()))
            length = int(headers.get(b"content-length", b"0"))  # h11 has checked it is digits
            if length > route.max_body_bytes:
                raise TooLarge(str(length), route.max_body_bytes, route.for_batch)  # not read at all
        except TooLarge as error:
            return _failure(error, status=413, close=True)
        except GatekeeperError as error:
            return _failure(error, close=True)
        admission = self._admission
        if admission.active >= admission.max_concurrent_rpcs:
            limit = admission.max_concurrent_rpcs
            admission.refusals.note(route.refused_as, "RESOURCE_EXHAUSTED", "concurrency_limit", f"{limit} in progress")
            message = f"the server is working on its limit of {limit} RPCs; retry after a backoff, or another instance"
            return _failure(Refused("RESOURCE_EXHAUSTED", message), close=True)
        admission.active += 1  # one pool of slots for both doors: the worker's CPU is one
        try:
            if incoming.http.they_are_waiting_for_100_continue:
                writer.write(incoming.http.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            try:
                body = await incoming.body(route.max_body_bytes, route)
            except _RequestTimedOut:
                seconds = self._read_seconds
                detail = f"no whole request within {seconds:g} s"
                admission.refusals.note(route.refused_as, "DEADLINE_EXCEEDED", "request_read_timeout", detail)
                late = Refused("DEADLINE_EXCEEDED", f"request: not received in full within {seconds:g} s")
                return _failure(late, status=408, close=True)
            except TooLarge as error:
                return _failure(error, status=413, close=True)
            return await self._decided(route, body, caller, deadline)
        finally:
            admission.active -= 1

    async def _decided(self, route: Route, body: bytes, caller: CallerOf, deadline: float | None) -> Answer:
        """The servicer's answer to a request read in full, within the caller's deadline."""
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            # Nobody is waiting for the answer any more: not worked on.
            metrics.RPC_REFUSED.labels(route.refused_as, "DEADLINE_EXCEEDED", "deadline_passed").inc()
            return _failure(Refused("DEADLINE_EXCEEDED", "the deadline passed before the request was read"))
        decision_id = new_decision_id()
        try:
            message = from_json(body, route.request_type())
            async with asyncio.timeout_at(deadline):
                response = await route.decide(message, caller, decision_id)
        except TimeoutError:
            return _failure(Refused("DEADLINE_EXCEEDED", "the deadline passed"))
        except GatekeeperError as error:
            if error.status != "INTERNAL":
                return _failure(error)
            return self._internal(route, error, decision_id)
        except Exception as error:
            return self._internal(route, error, decision_id)
        return Answer(200, "OK", to_json(response))

    @staticmethod
    def _internal(route: Route, error: Exception, decision_id: str) -> Answer:
        """A bug (or an error INTERNAL by nature): logged with its traceback, answered without details."""
        log.error("%s failed", route.method, exc_info=error, extra={"decision_id": decision_id})
        with_id = route.method.endswith("/CheckClaim")
        return _failure(GatekeeperError(f"internal error; decision id {decision_id}" if with_id else "internal error"))

    @staticmethod
    def _deadline(header: bytes | None) -> float | None:
        """The caller's deadline (event loop time) from X-Server-Timeout, or None."""
        if header is None:
            return None
        try:
            seconds = float(header)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < float("inf"):
            text = header[:32].decode("ascii", "replace")
            raise InvalidArgument("X-Server-Timeout", f"expected a number of seconds above 0, got {text!r}")
        return asyncio.get_running_loop().time() + seconds

    @staticmethod
    async def _send(connection: h11.Connection, writer: asyncio.StreamWriter, answer: Answer, close: bool) -> None:
        headers = [(b"content-type", JSON_TYPE), (b"content-length", str(len(answer.body)).encode()), *answer.headers]
        if close:
            headers.append((b"connection", b"close"))
        reason = REASONS.get(answer.status, b"")
        data = connection.send(h11.Response(status_code=answer.status, headers=headers, reason=reason)) or b""
        data += connection.send(h11.Data(data=answer.body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()
