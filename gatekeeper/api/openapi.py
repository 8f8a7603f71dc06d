"""The OpenAPI 3.1 document of the JSON-over-HTTP door, generated from the proto's descriptors.

``python -m gatekeeper.api.openapi > docs/openapi.json`` (``scripts/openapi``) writes it;
tests/unit/test_openapi.py fails when the document and the proto disagree.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from gatekeeper import __version__
from gatekeeper.api.http_json import DEADLINE_HEADER, HEALTH_PATH, HTTP_STATUS, PATHS
from gatekeeper.v1 import gatekeeper_pb2 as pb

SCHEMAS = "#/components/schemas/"
# The proto3 JSON mapping of each scalar type the proto uses. int64 is a JSON number in
# answers (amounts stay far below 2**53); requests may send a number or a decimal string.
SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_INT64: {"type": ["integer", "string"], "format": "int64"},
}
ERROR_RESPONSES = {
    "400": "INVALID_ARGUMENT (a field, named in error.field) or FAILED_PRECONDITION (min_registry_version)",
    "401": "UNAUTHENTICATED: the client certificate cannot be trusted to say who it is",
    "403": "PERMISSION_DENIED: the caller may not submit for the institution",
    "404": "NOT_FOUND: not a path of this service",
    "405": "not POST",
    "408": "DEADLINE_EXCEEDED: the request was not received in full within the read timeout",
    "413": "INVALID_ARGUMENT: the body is over the method's byte limit",
    "415": "INVALID_ARGUMENT: not Content-Type: application/json",
    "429": "RESOURCE_EXHAUSTED: the worker is working on its limit of requests; retry after a backoff",
    "500": "INTERNAL: a bug; the message carries the decision id to find it in the log",
    "503": "UNAVAILABLE: no registry data, or the decision cannot be recorded; retry, another instance may answer",
    "504": "DEADLINE_EXCEEDED: the X-Server-Timeout deadline passed",
}


def field_schema(field: FieldDescriptor) -> dict[str, Any]:
    """The JSON schema of one field's value."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None  # a message field has its type
        schema: dict[str, Any] = {"$ref": SCHEMAS + field.message_type.name}
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None  # an enum field has its type
        schema = {"$ref": SCHEMAS + field.enum_type.name}
    else:
        schema = dict(SCALARS[field.type])
    return {"type": "array", "items": schema} if field.is_repeated else schema


def message_schema(descriptor: Any) -> dict[str, Any]:
    """The JSON schema of a message: its fields by their proto (snake_case) names."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {field.name: field_schema(field) for field in descriptor.fields},
        "additionalProperties": False,
    }
    oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
    if oneofs:
        schema["description"] = "; ".join(
            f"{o.name}: at most one of {', '.join(f.name for f in o.fields)}" for o in oneofs
        )
    return schema


def enum_schema(descriptor: Any) -> dict[str, Any]:
    """The JSON schema of an enum: its value names (requests may also send the numbers)."""
    return {"type": "string", "enum": [value.name for value in descriptor.values]}


def _error_schema() -> dict[str, Any]:
    properties = {
        "code": {"type": "integer", "description": "the HTTP status"},
        "status": {"type": "string", "enum": sorted(HTTP_STATUS), "description": "the gRPC status name"},
        "message": {"type": "string", "description": "starts with the field at fault, as over gRPC"},
        "field": {"type": "string", "description": "INVALID_ARGUMENT: the field, e.g. items[3].fee_ocur_time"},
    }
    inner = {"type": "object", "properties": properties, "required": ["code", "status", "message"]}
    return {"type": "object", "properties": {"error": inner}, "required": ["error"]}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": SCHEMAS + schema}}}}


def document(file: Any = pb.DESCRIPTOR) -> dict[str, Any]:
    """The OpenAPI document of the door to ``file``'s Gatekeeper service."""
    service = file.services_by_name["Gatekeeper"]
    deadline = {
        "name": DEADLINE_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0},
        "description": "seconds the caller will wait; past it the answer is 504 and a request not yet read is not "
        "worked on",
    }
    errors = {code: {"description": text, **_json("Error")} for code, text in ERROR_RESPONSES.items()}
    paths: dict[str, Any] = {}
    for method in service.methods:
        paths[PATHS[method.name]] = {
            "post": {
                "operationId": method.name,
                "summary": f"{service.full_name}/{method.name}",
                "parameters": [deadline],
                "requestBody": {"required": True, **_json(method.input_type.name)},
                "responses": {"200": {"description": "decided", **_json(method.output_type.name)}, **errors},
            }
        }
    paths[HEALTH_PATH] = {
        "get": {
            "operationId": "Health",
            "summary": "200 while the service is SERVING, 503 while it is NOT_SERVING",
            "responses": {
                code: {"description": status, **_json("Health")}
                for code, status in (("200", "SERVING"), ("503", "NOT_SERVING"))
            },
        }
    }
    schemas: dict[str, Any] = {name: message_schema(m) for name, m in file.message_types_by_name.items()}
    schemas |= {name: enum_schema(e) for name, e in file.enum_types_by_name.items()}
    schemas["Error"] = _error_schema()
    schemas["Health"] = {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]}},
        "required": ["status"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "The settlement gatekeeper: JSON over HTTP",
            "version": __version__,
            "description": "The gRPC service gatekeeper.v1.Gatekeeper as JSON over HTTP POST: the proto3 JSON "
            "mapping with the proto's own (snake_case) field names. Generated from proto/gatekeeper/v1/"
            "gatekeeper.proto by `python -m gatekeeper.api.openapi`; do not edit by hand.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def main() -> None:
    """Print the document (JSON, keys in a stable order)."""
    json.dump(document(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
