"""Admission of RPCs: the concurrency limit, and the time a caller has to send its request.

gRPC's own ``maximum_concurrent_rpcs`` counts an RPC from its headers to its last byte
sent, and gRPC has no bound on the time between a request's headers and the end of its
message. A caller could hold every slot with streams that send headers and never finish
their message, or with requests whose answers it never reads. Here a slot is held from
the headers until the servicer returns its answer, the request message must arrive within
``request_read_seconds``, and sending the answer holds no slot (connection age, keepalive
and the per-connection stream limit bound what an unread answer can hold; see server.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc import aio

from gatekeeper.ops import metrics

log = logging.getLogger(__name__)

# Health checks are cheap and must answer while the service is busy: they are not counted
# against the limit (they still must arrive in time, and a connection still carries only
# so many streams).
UNLIMITED_METHODS = frozenset({"/grpc.health.v1.Health/Check"})
REFUSAL_LOG_INTERVAL_SECONDS = 10.0

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in grpc-stubs


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


class AdmissionInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Serves every unary RPC as a client-streaming one (the same bytes on the wire), so
    that the request is read here: within a time limit, and within the concurrency limit."""

    def __init__(self, max_concurrent_rpcs: int, request_read_seconds: float, refusals: RefusalLog | None = None):
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.request_read_seconds = request_read_seconds
        self.active = 0  # RPCs admitted and not yet answered
        self.refusals = refusals or RefusalLog()  # the JSON-over-HTTP door's refusals too
        # A method's handler is one object for the server's life: wrap it once, not per call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # health Watch, reflection: streams, left as they are
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._admitted(handler, method))
        return known[1]

    def _admitted(self, handler: Handler, method: str) -> Handler:
        behaviour: Callable[[Any, aio.ServicerContext], Awaitable[Any]] = handler.unary_unary  # type: ignore[assignment,type-arg]
        limited = method not in UNLIMITED_METHODS
        name = method.lstrip("/")

        async def admitted(requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:  # type: ignore[type-arg]
            if limited and self.active >= self.max_concurrent_rpcs:
                limit = self.max_concurrent_rpcs
                self.refusals.note(name, "RESOURCE_EXHAUSTED", "concurrency_limit", f"{limit} RPCs in progress")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is working on its limit of {limit} RPCs; retry after a backoff, or another instance",
                )
            self.active += limited
            try:
                try:
                    async with asyncio.timeout(self.request_read_seconds):
                        request = await context.read()
                except asyncio.CancelledError:
                    # gRPC cancels an RPC whose deadline passed: here, before its request was read.
                    remaining = context.time_remaining()
                    if remaining is not None and remaining <= 0:
                        metrics.RPC_REFUSED.labels(name, "DEADLINE_EXCEEDED", "deadline_passed").inc()
                    raise
                except TimeoutError:
                    seconds = self.request_read_seconds
                    self.refusals.note(
                        name, "DEADLINE_EXCEEDED", "request_read_timeout", f"no whole request within {seconds:g} s"
                    )
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"request: not received in full within {seconds:g} s"
                    )
                if request is aio.EOF:  # type: ignore[attr-defined]  # missing from grpc-stubs
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: the stream ended without a message")
                return await behaviour(request, context)
            finally:
                self.active -= limited

        return grpc.stream_unary_rpc_method_handler(
            admitted, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
