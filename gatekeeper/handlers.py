"""Register the servicer with gRPC: undecodable requests are INVALID_ARGUMENT, expired ones are not worked on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from gatekeeper import metrics
from gatekeeper.v1 import gatekeeper_pb2, gatekeeper_pb2_grpc

SERVICE = gatekeeper_pb2.DESCRIPTOR.services_by_name["Gatekeeper"]

Behaviour = Callable[[Any, aio.ServicerContext], Awaitable[Message]]  # type: ignore[type-arg]


class Undecodable:
    """Stands for a request whose bytes are not a message of the method's type."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(parse: Callable[[bytes], Message]) -> Callable[[bytes], Message | Undecodable]:
    """A deserializer that never raises: gRPC would answer UNKNOWN, naming the exception class."""

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except DecodeError as error:
            return Undecodable(str(error)[:200])

    return deserialize


def _guarded(behaviour: Behaviour, request_type: str, method: str = "") -> Behaviour:
    async def handle(request: Any, context: aio.ServicerContext) -> Message:  # type: ignore[type-arg]
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


def add_gatekeeper_servicer(servicer: gatekeeper_pb2_grpc.GatekeeperServicer, server: aio.Server) -> None:
    """What the generated ``add_GatekeeperServicer_to_server`` does, with the guards above."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(gatekeeper_pb2, method.input_type.name)
        response_class = getattr(gatekeeper_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name), method.input_type.full_name, f"{SERVICE.full_name}/{method.name}"),
            request_deserializer=_tolerant(request_class.FromString),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]
