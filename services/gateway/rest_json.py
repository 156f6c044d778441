"""protobuf -> REST/JSON responses, driven by descriptors only (pure, no I/O, no grpc).

`json_format.MessageToDict` with lowerCamelCase names (json_name kept, e.g.
dnsCAA) and fields without presence printed, then one walk by descriptor that
renders enum values the REST way (enums.py) and 64-bit integers as JSON
numbers (the reference API's shapes; counts never reach 2^53).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.gateway.catalog import HttpRoute
from services.gateway.descriptors import (
    INT64_TYPES,
    descriptor_of,
    enum_of,
    field_of,
    is_map,
    is_repeated,
    is_well_known,
    message_of,
)
from services.gateway.enums import enum_names
from shared.jsonnum import whole_numbers

Transform = Callable[[Any], Any]


@cache
def _output_plan(descriptor: Descriptor) -> tuple[tuple[str, Transform], ...]:
    """(json key, transform) for the fields whose JSON the REST form changes."""
    plan: list[tuple[str, Transform]] = []
    for field in descriptor.fields:
        single = _single_output(field)
        if single is None:
            continue
        if is_map(field):
            value_transform = _single_output(field_of(message_of(field), "value"))
            if value_transform is None:
                continue
            plan.append((field.json_name, _each_value(value_transform)))
        elif is_repeated(field):
            plan.append((field.json_name, _each_item(single)))
        else:
            plan.append((field.json_name, single))
    return tuple(plan)


def _each_item(transform: Transform) -> Transform:
    return lambda items: [transform(item) for item in items]


def _each_value(transform: Transform) -> Transform:
    return lambda mapping: {key: transform(item) for key, item in mapping.items()}


def _single_output(field: FieldDescriptor) -> Transform | None:
    if is_map(field):
        return _single_output(field_of(message_of(field), "value"))
    if field.type == FieldDescriptor.TYPE_ENUM:
        if enum_of(field).full_name == "google.protobuf.NullValue":
            return None
        aliases = enum_names(enum_of(field)).alias_by_name
        return lambda value: aliases.get(value, value) if isinstance(value, str) else value
    if field.type in INT64_TYPES:
        return _int64_number
    if _is_json_value(field):
        return whole_numbers
    if field.type == FieldDescriptor.TYPE_MESSAGE and not is_well_known(message_of(field)):
        message_type = message_of(field)
        if not _needs_output_walk(message_type):
            return None
        return lambda value: rest_output(message_type, value)
    return None


# google.protobuf.Struct numbers are doubles: render whole ones as JSON integers
# (16, not 16.0), so a signed document read back re-canonicalises exactly.
_JSON_VALUE_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def _is_json_value(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and message_of(field).full_name in _JSON_VALUE_TYPES
    )


def _int64_number(value: Any) -> Any:
    return int(value) if isinstance(value, str) else value


@cache
def _needs_output_walk(descriptor: Descriptor, _visiting: frozenset[str] = frozenset()) -> bool:
    if descriptor.full_name in _visiting:
        return False
    visiting = _visiting | {descriptor.full_name}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_ENUM or field.type in INT64_TYPES:
            return True
        if _is_json_value(field):
            return True
        if (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not is_well_known(message_of(field))
            and _needs_output_walk(message_of(field), visiting)
        ):
            return True
    return False


def rest_output(descriptor: Descriptor, data: Any) -> Any:
    """Apply the REST renderings to MessageToDict's output for this message (in place)."""
    if not isinstance(data, dict):
        return data
    for key, transform in _output_plan(descriptor):
        if key in data:
            data[key] = transform(data[key])
    return data


def message_to_json(message: Message) -> dict[str, Any]:
    """A message in the gateway's JSON form."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    result: dict[str, Any] = rest_output(descriptor_of(message), data)
    return result


def response_to_json(route: HttpRoute, response: Message) -> Any:
    """The HTTP body for a response: the whole message, or its `response_body` field."""
    if not route.response_body:
        return message_to_json(response)
    field = field_of(descriptor_of(response), route.response_body)
    if field.type == FieldDescriptor.TYPE_MESSAGE and not is_repeated(field):
        if not response.HasField(route.response_body):
            return None
        return message_to_json(getattr(response, route.response_body))
    whole = message_to_json(response)
    return whole.get(field.json_name)


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
