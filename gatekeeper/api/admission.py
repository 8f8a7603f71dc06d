"""Admission of RPCs: the concurrency limit, the time a caller has to send its request, the
checks every request passes before a servicer sees it, and the RPC's duration.

gRPC's own ``maximum_concurrent_rpcs`` counts an RPC from its headers to its last byte
sent, and gRPC has no bound on the time between a request's headers and the end of its
message. A caller could hold every slot with streams that send headers and never finish
their message, or with requests whose answers it never reads. Here a slot is held from
the headers until the servicer returns its answer, the request message must arrive within
``request_read_seconds``, and sending the answer holds no slot (connection age, keepalive
and the per-connection stream limit bound what an unread answer can hold; see server.py).

All of it is one coroutine per RPC, wrapped around each method's behaviour when it is
registered: no server interceptors (gRPC runs their chain on every call) and no timer per
request (one sweeper task cancels the reads that outlive their time, while there are any).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from gatekeeper.ops import metrics

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_SECONDS = 10.0
# A read is cancelled between its limit and its limit plus this share of it.
SWEEPS_PER_LIMIT = 10

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in grpc-stubs
Behaviour: TypeAlias = "Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]"


class Undecodable:
    """Stands for a request whose bytes are not a message of the method's type."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class Oversized(Undecodable):
    """Stands for a request with more bytes than its method accepts: never decoded."""


def tolerant(
    parse: Callable[[bytes], Message], max_bytes: int | None = None, what: str = ""
) -> Callable[[bytes], Message | Undecodable]:
    """A deserializer that never raises: gRPC would answer UNKNOWN, naming the exception class.
    A request larger than ``max_bytes`` is not decoded at all."""

    def deserialize(data: bytes) -> Message | Undecodable:
        if max_bytes is not None and len(data) > max_bytes:
            return Oversized(f"is {len(data)} bytes, more than the maximum of {max_bytes}{what}")
        try:
            return parse(data)
        except DecodeError as error:
            return Undecodable(str(error)[:200])

    return deserialize


class RefusalLog:
    """Warns of refusals at most once per interval and reason, with how many there were:
    a caller must not be able to flood the log by being refused."""

    def __init__(
        self, interval_seconds: float = REFUSAL_LOG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._next: dict[str, float] = {}

    def note(self, method: str, code: str, reason: str, detail: str) -> None:
        """Count one refusal; log it with those since the last report, if it is time to."""
        metrics.RPC_REFUSED.labels(method, code, reason).inc()
        self._counts[reason] += 1
        now = self._clock()
        if now >= self._next.get(reason, 0.0):
            count = self._counts[reason]
            log.warning("refused %s: %s: %s (%d such since the last report)", method, code, detail, count)
            self._counts[reason] = 0
            self._next[reason] = now + self._interval


class ReadDeadlines:
    """Cancels request reads that take longer than ``seconds``: one sweeper task, which
    runs while reads are waiting, instead of a timer per request."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._interval = seconds / SWEEPS_PER_LIMIT
        self._waiting: dict[asyncio.Task[Any], float] = {}  # a reading task -> when its time is up
        self._overdue: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, context: aio.ServicerContext[Any, Any]) -> Any:
        """The request, or TimeoutError when it did not arrive in time."""
        task = asyncio.current_task()
        assert task is not None  # an RPC runs in a task
        loop = asyncio.get_running_loop()
        self._waiting[task] = loop.time() + self.seconds
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep(), name="request-read-deadlines")
        try:
            return await context.read()
        except asyncio.CancelledError:
            if task not in self._overdue:
                raise
            self._overdue.discard(task)
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._waiting.pop(task, None)

    async def close(self) -> None:
        """Stop the sweeper (the server has stopped: no read is waiting any more)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(self._interval)
                now = loop.time()
                for task, due in list(self._waiting.items()):
                    if due <= now:
                        del self._waiting[task]
                        self._overdue.add(task)
                        task.cancel()
        finally:
            self._sweeper = None


class Admission:
    """Serves each unary method as a client-streaming one (the same bytes on the wire), so
    that its request is read here: within a time limit, and within the concurrency limit."""

    def __init__(self, max_concurrent_rpcs: int, request_read_seconds: float, refusals: RefusalLog | None = None):
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.active = 0  # RPCs admitted and not yet answered
        self._reads = ReadDeadlines(request_read_seconds)
        self.refusals = refusals or RefusalLog()  # the JSON-over-HTTP door's refusals too

    async def close(self) -> None:
        """Stop the admission's background work, once the server has stopped."""
        await self._reads.close()

    def handler(
        self,
        behaviour: Behaviour,
        method: str,
        request_deserializer: Callable[[bytes], Any],
        response_serializer: Callable[[Any], bytes],
        *,
        request_type: str = "",
        limited: bool = True,
    ) -> Handler:
        """The method handler serving ``behaviour`` (``method`` as "package.Service/Method").

        Before the behaviour sees a request: the concurrency limit (unless ``limited`` is
        False: health checks must answer while the service is busy), the read limit, then
        requests that could not be decoded (``Undecodable`` from a :func:`tolerant`
        deserializer) are INVALID_ARGUMENT and requests whose deadline passed while they
        waited are not worked on (nobody is waiting for the answer any more). The
        behaviour's duration is observed by status code."""
        reads, refusals = self._reads, self.refusals
        observe_duration = metrics.observe_duration
        max_active = self.max_concurrent_rpcs

        async def admitted(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            if limited and self.active >= max_active:
                refusals.note(method, "RESOURCE_EXHAUSTED", "concurrency_limit", f"{max_active} RPCs in progress")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is working on its limit of {max_active} RPCs; retry after a backoff, or another "
                    "instance",
                )
            self.active += limited
            try:
                try:
                    request = await reads.read(context)
                except TimeoutError:
                    seconds = reads.seconds
                    refusals.note(
                        method, "DEADLINE_EXCEEDED", "request_read_timeout", f"no whole request within {seconds:g} s"
                    )
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"request: not received in full within {seconds:g} s"
                    )
                except asyncio.CancelledError:
                    # gRPC cancels an RPC whose deadline passed: here, before its request was read.
                    remaining = context.time_remaining()
                    if remaining is not None and remaining <= 0:
                        metrics.RPC_REFUSED.labels(method, "DEADLINE_EXCEEDED", "deadline_passed").inc()
                    raise
                if request is aio.EOF:  # type: ignore[attr-defined]  # missing from grpc-stubs
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: the stream ended without a message")
                started = time.perf_counter()
                code = "UNKNOWN"
                try:
                    if isinstance(request, Undecodable):
                        problem = request.problem
                        if not isinstance(request, Oversized):
                            problem = f"not a valid {request_type} message ({problem})"
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {problem}")
                    remaining = context.time_remaining()
                    if remaining is not None and remaining <= 0:
                        metrics.RPC_REFUSED.labels(method, "DEADLINE_EXCEEDED", "deadline_passed").inc()
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was read"
                        )
                    response = await behaviour(request, context)
                    status = context.code()
                    code = "OK" if status is None else status.name
                    return response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    status = context.code()  # set by context.abort before it raises
                    code = "UNKNOWN" if status is None else status.name
                    raise
                finally:
                    observe_duration(method, code, time.perf_counter() - started)
            finally:
                self.active -= limited

        return grpc.stream_unary_rpc_method_handler(
            admitted, request_deserializer=request_deserializer, response_serializer=response_serializer
        )
