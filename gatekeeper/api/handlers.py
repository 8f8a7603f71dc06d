"""Register the services with gRPC, every unary method behind the admission (api/admission.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # missing from grpc-stubs

from gatekeeper.api.admission import Admission, tolerant
from gatekeeper.api.validation import Limits, wire_bounds
from gatekeeper.core import native
from gatekeeper.core.rules import Claim
from gatekeeper.v1 import gatekeeper_pb2, gatekeeper_pb2_grpc

SERVICE = gatekeeper_pb2.DESCRIPTOR.services_by_name["Gatekeeper"]
HEALTH_SERVICE = "grpc.health.v1.Health"


def _register(server: aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:  # type: ignore[type-arg]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def claim_or_message(limits: Limits, c_path: bool = True) -> Callable[[bytes], Claim | Message]:
    """CheckClaim's parser: a plain request becomes its validated Claim as it is read, in C
    (core/native.py); any other request (or all, where the C was not built or ``c_path`` is
    False) its message, which the servicer validates."""
    from_string = gatekeeper_pb2.CheckClaimRequest.FromString
    parse_claim, bounds = native.parse_claim, wire_bounds(limits)
    if parse_claim is None or not c_path:
        return from_string

    def parse(data: bytes) -> Claim | Message:
        claim = parse_claim(data, bounds)
        return from_string(data) if claim is None else claim

    return parse


def bytes_or_message(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A serializer that sends an answer already serialized (CheckClaim's, in C) as it is."""

    def serializer(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return serializer


def add_gatekeeper_servicer(
    servicer: gatekeeper_pb2_grpc.GatekeeperServicer,
    server: aio.Server,
    admission: Admission,
    limits: Limits,
    c_path: bool = True,
) -> None:
    """What the generated ``add_GatekeeperServicer_to_server`` does, behind the admission;
    requests above their size limit are refused before they are decoded, undecodable ones
    are INVALID_ARGUMENT (gRPC itself would answer UNKNOWN, naming an exception class)."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(gatekeeper_pb2, method.input_type.name)
        response_class = getattr(gatekeeper_pb2, method.output_type.name)
        # CheckClaims: the batch's total; each of its claims is checked as CheckClaim's.
        batch = method.name == "CheckClaims"
        max_bytes = limits.max_batch_bytes if batch else limits.max_request_bytes
        parse, serialize = request_class.FromString, response_class.SerializeToString
        if method.name == "CheckClaim":
            parse, serialize = claim_or_message(limits, c_path), bytes_or_message(serialize)
        handlers[method.name] = admission.handler(
            getattr(servicer, method.name),
            f"{SERVICE.full_name}/{method.name}",
            tolerant(parse, max_bytes, " for a batch" if batch else ""),
            serialize,
            request_type=method.input_type.full_name,
        )
    _register(server, SERVICE.full_name, handlers)


def add_health_servicer(health: health_aio.HealthServicer, server: aio.Server, admission: Admission) -> None:
    """The gRPC health service. Check goes through the admission's read limit, not its
    concurrency limit: health must answer while the service is busy. Watch is a stream
    (a connection still carries only so many)."""
    handlers = {
        "Check": admission.handler(
            health.Check,
            f"{HEALTH_SERVICE}/Check",
            tolerant(health_pb2.HealthCheckRequest.FromString),
            health_pb2.HealthCheckResponse.SerializeToString,
            request_type="grpc.health.v1.HealthCheckRequest",
            limited=False,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            health.Watch,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
    _register(server, HEALTH_SERVICE, handlers)
