"""docs/openapi.json agrees with the proto: every message field and enum value, with its type, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from gatekeeper.api.openapi import document
from gatekeeper.v1 import gatekeeper_pb2 as pb

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
OWN_SCHEMAS = {"Error", "Health"}  # the door's own, not the proto's
REF = "#/components/schemas/"


def expected_type(field: FieldDescriptor) -> Any:
    """What the proto3 JSON mapping makes of a field, written out independently of the generator."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        value: Any = {"$ref": REF + field.message_type.name}
    elif field.type == FieldDescriptor.TYPE_ENUM:
        value = {"$ref": REF + field.enum_type.name}
    else:
        value = {
            FieldDescriptor.TYPE_STRING: {"type": "string"},
            FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
            FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
            FieldDescriptor.TYPE_INT64: {"type": ["integer", "string"], "format": "int64"},
        }[field.type]
    return {"type": "array", "items": value} if field.is_repeated else value


def disagreements(file: Any, openapi: dict[str, Any]) -> list[str]:
    """Every way the document and the proto file differ, both ways round."""
    schemas = openapi["components"]["schemas"]
    found = []
    for name, message in file.message_types_by_name.items():
        properties = schemas.get(name, {}).get("properties", {})
        for field in message.fields:
            if field.name not in properties:
                found.append(f"{name}.{field.name}: in the proto, not in the document")
            elif properties[field.name] != expected_type(field):
                found.append(f"{name}.{field.name}: {properties[field.name]} for {expected_type(field)}")
        found += [
            f"{name}.{p}: in the document, not in the proto" for p in set(properties) - set(message.fields_by_name)
        ]
    for name, enum in file.enum_types_by_name.items():
        if schemas.get(name, {}).get("enum") != [value.name for value in enum.values]:
            found.append(f"{name}: values {schemas.get(name, {}).get('enum')} for {[v.name for v in enum.values]}")
    proto_names = set(file.message_types_by_name) | set(file.enum_types_by_name)
    found += [f"{name}: in the document, not in the proto" for name in set(schemas) - proto_names - OWN_SCHEMAS]
    for method in file.services_by_name["Gatekeeper"].methods:
        posts = [p["post"] for p in openapi["paths"].values() if p.get("post", {}).get("operationId") == method.name]
        request = posts[0]["requestBody"]["content"]["application/json"]["schema"] if posts else None
        if request != {"$ref": REF + method.input_type.name}:
            found.append(f"{method.name}: request {request}")
    return found


def test_the_document_agrees_with_the_proto() -> None:
    assert disagreements(pb.DESCRIPTOR, json.loads(OPENAPI.read_text(encoding="utf-8"))) == []


def test_the_document_is_the_generated_one() -> None:
    assert json.loads(OPENAPI.read_text(encoding="utf-8")) == document(), "run scripts/openapi"


def test_a_field_the_proto_gains_is_a_disagreement() -> None:
    # The proto as another change would make it: ItemDecision with a new string field.
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    item = next(m for m in proto.message_type if m.name == "ItemDecision")
    item.field.add(name="note", number=99, type=FieldDescriptor.TYPE_STRING, label=FieldDescriptor.LABEL_OPTIONAL)
    grown = descriptor_pool.DescriptorPool().Add(proto)
    committed = json.loads(OPENAPI.read_text(encoding="utf-8"))

    assert disagreements(grown, committed) == ["ItemDecision.note: in the proto, not in the document"]
    assert disagreements(grown, document(grown)) == []  # and regenerating mends it


def test_a_field_the_document_lacks_or_mistypes_is_a_disagreement() -> None:
    openapi = document()
    properties = openapi["components"]["schemas"]["LineItem"]["properties"]
    del properties["emergency"]
    properties["amount_fen"] = {"type": "string"}
    openapi["components"]["schemas"]["Verdict"]["enum"].pop()

    assert sorted(disagreements(pb.DESCRIPTOR, openapi)) == [
        "LineItem.amount_fen: {'type': 'string'} for {'type': ['integer', 'string'], 'format': 'int64'}",
        "LineItem.emergency: in the proto, not in the document",
        "Verdict: values ['VERDICT_UNSPECIFIED', 'VERDICT_ALLOW', 'VERDICT_ALLOW_EXEMPT'] for "
        "['VERDICT_UNSPECIFIED', 'VERDICT_ALLOW', 'VERDICT_ALLOW_EXEMPT', 'VERDICT_BLOCK']",
    ]
