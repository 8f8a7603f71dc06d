"""The proto3 JSON mapping of the API's messages: what ``json_format`` makes of them, at a fraction of its cost.

Answers are what ``json_format.MessageToDict(message, always_print_fields_with_no_presence=
True, preserving_proto_field_name=True, unquote_int64_if_possible=True)`` gives: every field
by its proto (snake_case) name, a false or empty one too, enums by name, int64 as numbers.
Requests are what ``json_format.ParseDict`` accepts (snake_case or lowerCamelCase names,
int64 as numbers or decimal strings, null for a default). ``json_format`` walks every field
in Python (about 0.6 ms for a 10-item claim both ways, more than deciding it), so the common
shapes take a shorter road: a request with the proto's own names is built by the message's
constructor (in C), int64 decimal strings made numbers first, and answers are written by
encoders made once per message type from its descriptor. Anything else goes through ``json_format`` itself;
tests/unit/test_json_mapping.py holds the two roads equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gatekeeper.core.errors import InvalidArgument

Encoder = Callable[[Any], Any]
_SAFE_INTEGER = 2**53  # json_format unquotes int64 values below it (and a sparse set above: not taken here)
_SCALARS = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_INT32}


class _Unsafe(Exception):
    """An int64 too large to be sure how json_format writes it: the message goes through json_format."""


def _int64(value: int) -> int:
    if -_SAFE_INTEGER < value < _SAFE_INTEGER:
        return value
    raise _Unsafe()


def _value_encoder(field: FieldDescriptor, encoders: dict[str, Encoder | None]) -> Encoder | None:
    """How one value of ``field`` is written; None for a type left to json_format."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None  # a message field has its type
        return _message_encoder(field.message_type, encoders)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None  # an enum field has its type
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)  # an unknown number is written as a number
    if field.type == FieldDescriptor.TYPE_INT64:
        return _int64
    if field.type in _SCALARS:
        return lambda value: value
    return None  # floats, bytes, maps, well-known types: json_format's rules are subtler


def _message_encoder(descriptor: Any, encoders: dict[str, Encoder | None]) -> Encoder | None:
    """The encoder of one message type, made once from its descriptor; None when a field of
    it (or of a message in it) is of a type left to json_format."""
    name = descriptor.full_name
    if name in encoders:
        return encoders[name]
    encoders[name] = None  # a message that holds itself is left to json_format
    steps: list[tuple[str, bool, bool, Encoder]] = []
    for field in descriptor.fields:
        value_encoder = _value_encoder(field, encoders)
        if value_encoder is None:
            return None
        steps.append((field.name, field.is_repeated, field.has_presence, value_encoder))

    def encode(message: Any) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for field_name, repeated, presence, value_encoder in steps:
            if presence:  # a singular message or a oneof member: written only when set
                if message.HasField(field_name):
                    document[field_name] = value_encoder(getattr(message, field_name))
            elif repeated:
                document[field_name] = [value_encoder(v) for v in getattr(message, field_name)]
            else:
                document[field_name] = value_encoder(getattr(message, field_name))
        return document

    encoders[name] = encode
    return encode


_ENCODERS: dict[str, Encoder | None] = {}


def message_to_dict(message: Message) -> dict[str, Any]:
    """``message`` as json_format writes it (see the module's docstring)."""
    encode = _message_encoder(message.DESCRIPTOR, _ENCODERS)
    if encode is not None:
        try:
            document: dict[str, Any] = encode(message)
            return document
        except _Unsafe:
            pass
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def to_json(message: Message) -> bytes:
    """A response message as UTF-8 JSON."""
    return json.dumps(message_to_dict(message), ensure_ascii=False, separators=(",", ":")).encode()


# What the constructor road checks of each message type's fields: (name, repeated, what to
# check: "bool", "integer" or a message type's plan), made once per type.
_Plan = tuple[tuple[str, bool, Any], ...]
_PLANS: dict[str, _Plan] = {}


def _plan(descriptor: Any) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        _PLANS[descriptor.full_name] = ()  # a message that holds itself: its own plan, once made
        steps: list[tuple[str, bool, Any]] = []
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_BOOL:
                steps.append((field.name, field.is_repeated, "bool"))
            elif field.type in _INTEGER_RANGES:
                steps.append((field.name, field.is_repeated, "integer"))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                steps.append((field.name, field.is_repeated, _plan(field.message_type)))
            elif field.is_repeated:
                steps.append((field.name, True, None))
        plan = _PLANS[descriptor.full_name] = tuple(steps)
    return plan


def _constructor_ready(document: dict[str, Any], plan: _Plan) -> bool:
    """Make the document what the message's constructor reads as json_format would read the
    original: int64 and int32 given as decimal strings become numbers. False when that cannot
    be done: a repeated field not a JSON array, a bool not true or false (the constructor
    takes 0 and 1 for a bool, and a JSON object as a list of its keys; json_format takes
    neither), or anything else json_format's road should judge."""
    for name, repeated, check in plan:
        value = document.get(name)
        if value is None:
            continue
        if repeated and not isinstance(value, list):
            return False
        values = value if repeated else [value]
        if check == "bool":
            if any(type(v) is not bool for v in values):
                return False
        elif check == "integer":
            if any(type(v) is str for v in values):
                if not all(type(v) is int or (type(v) is str and _INTEGER_TEXT.fullmatch(v)) for v in values):
                    return False
                numbers = [int(v) for v in values]
                document[name] = numbers if repeated else numbers[0]
        elif check is not None and not all(isinstance(v, dict) and _constructor_ready(v, check) for v in values):
            return False
    return True


def parse_dict(document: dict[str, Any], message: Message) -> Message:
    """Fill ``message`` from a JSON object as json_format.ParseDict would, or InvalidArgument naming the field."""
    # Made ready in place: json_format reads a decimal string and its number alike, so its road
    # (taken when the constructor's is not) reads the document the same either way.
    if _constructor_ready(document, _plan(message.DESCRIPTOR)):
        try:
            built = type(message)(**document)
        except (TypeError, ValueError):
            pass  # camelCase names, a wrong type, a number out of range: json_format's road finds the fault
        else:
            message.MergeFrom(built)
            return message
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        # json_format names neither the path nor the index: find the field ourselves.
        located = locate_problem(document, message.DESCRIPTOR)
        raise (InvalidArgument(*located) if located else InvalidArgument("request", str(error)[:200])) from None
    return message


def from_json(body: bytes, message: Message) -> Message:
    """Parse a request body into ``message``, or InvalidArgument naming the field."""
    try:
        document = json.loads(body)
    except ValueError as error:  # not UTF-8 (UnicodeDecodeError), or not JSON
        raise InvalidArgument("request", f"not JSON ({str(error)[:120]})") from None
    if not isinstance(document, dict):
        raise InvalidArgument("request", f"expected a JSON object, got {type(document).__name__}")
    return parse_dict(document, message)


_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
}


def _value_problem(value: object, field: FieldDescriptor, where: str) -> tuple[str, str] | None:
    """(where, what is wrong) when ``value`` is not a JSON value of ``field``'s type."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return locate_problem(value, field.message_type, where)
    if kind == FieldDescriptor.TYPE_STRING:
        return None if isinstance(value, str) else (where, "expected a string")
    if kind == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else (where, "expected true or false")
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None  # an enum field has its type
        names = [v.name for v in enum.values]
        if value in names or (type(value) is int and value in enum.values_by_number):
            return None
        return where, f"expected one of {', '.join(names)}"
    if kind in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[kind]
        integral = type(value) is int or (isinstance(value, float) and value.is_integer())
        if not (integral or (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value))):
            return where, "expected an integer (a JSON number, or a string of digits)"
        if not low <= int(value) <= high:  # type: ignore[call-overload]  # an int, float or str, as checked
            return where, f"is outside {low} to {high}"
    return None


def locate_problem(document: object, descriptor: Any, path: str = "") -> tuple[str, str] | None:
    """The first field of a JSON object that is not what the message ``descriptor`` expects, as
    (``items[3].amount_fen``, what is wrong); None when no such field is found."""
    if not isinstance(document, dict):
        return path or "request", "expected a JSON object"
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    for name, value in document.items():
        where = f"{path}.{name}" if path else str(name)
        field = fields.get(name)
        if field is None:
            return where, f"is not a field of {descriptor.full_name}"
        if value is None:  # null: the field's default
            continue
        if field.is_repeated:
            if not isinstance(value, list):
                return where, "expected a JSON array"
            for index, element in enumerate(value):
                problem = _value_problem(element, field, f"{where}[{index}]")
                if problem:
                    return problem
        else:
            problem = _value_problem(value, field, where)
            if problem:
                return problem
    return None
