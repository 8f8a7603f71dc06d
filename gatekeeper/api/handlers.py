"""Register the servicer with gRPC: undecodable requests are INVALID_ARGUMENT, expired ones are not worked on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from gatekeeper.api.validation import Limits
from gatekeeper.ops import metrics
from gatekeeper.v1 import gatekeeper_pb2, gatekeeper_pb2_grpc

SERVICE = gatekeeper_pb2.DESCRIPTOR.services_by_name["Gatekeeper"]

Behaviour = Callable[[Any, aio.ServicerContext], Awaitable[Message]]  # type: ignore[type-arg]


class Undecodable:
    """Stands for a request whose bytes are not a message of the method's type."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class Oversized(Undecodable):
    """Stands for a request with more bytes than its method accepts: never decoded."""


def _tolerant(
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


def _guarded(behaviour: Behaviour, request_type: str, method: str = "") -> Behaviour:
    async def handle(request: Any, context: aio.ServicerContext) -> Message:  # type: ignore[type-arg]
        if isinstance(request, Oversized):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {request.problem}")
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {request_type} message ({request.problem})"
            )
        # A request that waited past its deadline (a busy process) is not worked on: nobody
        # is waiting for the answer any more.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            metrics.RPC_REFUSED.labels(method, "DEADLINE_EXCEEDED", "deadline_passed").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was read")
        return await behaviour(request, context)

    return handle


def add_gatekeeper_servicer(
    servicer: gatekeeper_pb2_grpc.GatekeeperServicer, server: aio.Server, limits: Limits | None = None
) -> None:
    """What the generated ``add_GatekeeperServicer_to_server`` does, with the guards above;
    with ``limits``, requests above their size limit are refused before they are decoded."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(gatekeeper_pb2, method.input_type.name)
        response_class = getattr(gatekeeper_pb2, method.output_type.name)
        max_bytes, what = None, ""
        if limits is not None:  # CheckClaims: the batch's total; each of its claims is checked as CheckClaim's
            batch = method.name == "CheckClaims"
            max_bytes = limits.max_batch_bytes if batch else limits.max_request_bytes
            what = " for a batch" if batch else ""
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name), method.input_type.full_name, f"{SERVICE.full_name}/{method.name}"),
            request_deserializer=_tolerant(request_class.FromString, max_bytes, what),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]
