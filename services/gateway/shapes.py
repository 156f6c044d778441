"""The JSON-shape checks of a REST request (pure, no I/O, no grpc), before the
protobuf parser sees it: the body is JSON without NaN or Infinity, every key
names a field (unknown ones are refused, named), enum values are REST or proto
names, a message field is a JSON object, a query or path string is a value of
its field's type and range. Each refusal is a BadRequest naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.gateway.descriptors import (
    INT_RANGES,
    STRING_WELL_KNOWN,
    WRAPPERS,
    enum_of,
    field_of,
    fields_by_json_key,
    is_map,
    is_repeated,
    is_well_known,
    message_of,
)
from services.gateway.enums import enum_input
from services.gateway.errors import BadRequest, MalformedJson, UnknownField
from shared.json_numbers import non_finite_path, parse_constant, parse_float


def parse_body(raw: bytes) -> Any:
    """The request body as JSON (an empty body is no body: None)."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw, parse_constant=parse_constant, parse_float=parse_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8
        raise MalformedJson(str(exc)) from None
    bad = non_finite_path(data)
    if bad is not None:
        raise BadRequest(bad, "NaN, Infinity and out-of-range numbers are not JSON numbers")
    return data


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def normalize_input(descriptor: Descriptor, data: Any, where: str = "") -> Any:
    """Check a JSON object against the message (unknown fields -> BadRequest) and turn
    REST enum values into proto names. Returns the object, changed in place."""
    if not isinstance(data, dict):
        return data  # json_format reports the type error
    fields = fields_by_json_key(descriptor)
    for key in list(data):
        field = fields.get(key)
        path = _join(where, key)
        if field is None:
            raise UnknownField(path)
        value = data[key]
        if value is None:
            continue
        data[key] = normalize_field(field, value, path)
    return data


def normalize_field(field: FieldDescriptor, value: Any, where: str) -> Any:
    if is_map(field):
        value_field = field_of(message_of(field), "value")
        if isinstance(value, dict):
            for key, item in value.items():
                if item is not None:
                    value[key] = _normalize_single(value_field, item, f"{where}.{key}")
        return value
    if is_repeated(field):
        if isinstance(value, list):
            return [
                _normalize_single(field, item, f"{where}[{index}]")
                for index, item in enumerate(value)
            ]
        return value
    return _normalize_single(field, value, where)


def _normalize_single(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        if enum_of(field).full_name == "google.protobuf.NullValue":
            return value
        return enum_input(enum_of(field), value, where)
    if field.type == FieldDescriptor.TYPE_MESSAGE and not is_well_known(message_of(field)):
        return normalize_input(message_of(field), value, where)
    return value


def parse_scalar(field: FieldDescriptor, text: str, where: str) -> Any:
    """A query or path string as the JSON value of a singular (non-message) field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        return _parse_bool(text, where)
    if kind in INT_RANGES:
        return _parse_int(kind, text, where)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(text.strip())
        except ValueError:
            raise BadRequest(where, f"expected a number, got {text!r}") from None
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_input(enum_of(field), text.strip(), where)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        full_name = message_of(field).full_name
        if full_name in STRING_WELL_KNOWN:
            return text
        if full_name in WRAPPERS:
            return parse_scalar(field_of(message_of(field), "value"), text, where)
        raise BadRequest(where, "a message field cannot be set from a query parameter")
    return text  # string, bytes (base64, checked by json_format)


def _parse_bool(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadRequest(where, f"expected true or false, got {text!r}")


def _parse_int(kind: int, text: str, where: str) -> int:
    low, high = INT_RANGES[kind]
    try:
        number = int(text.strip())
    except ValueError:
        raise BadRequest(where, f"expected an integer, got {text!r}") from None
    if not low <= number <= high:
        raise BadRequest(where, f"{number} is out of range [{low}, {high}]")
    return number


def check_shapes(descriptor: Descriptor, data: Any, prefix: str = "") -> None:
    """A message field given as a string, a number or a list (`"verificationFlags":
    "hardware"`) gets an error naming the shape expected, with its fields; the
    protobuf parser's own message names neither."""
    if not isinstance(data, dict):
        return
    by_name = {f.json_name: f for f in descriptor.fields} | {f.name: f for f in descriptor.fields}
    for key, value in data.items():
        field = by_name.get(key)
        if field is None or value is None or field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        target = message_of(field)
        if target.full_name.startswith("google.protobuf."):
            continue  # well-known types have their own JSON forms (strings, any value)
        where = f"{prefix}{field.json_name}"
        if is_map(field):
            if not isinstance(value, dict):
                raise BadRequest(where, "expected a JSON object of keys to values")
            continue
        items = value if is_repeated(field) else [value]
        if is_repeated(field) and not isinstance(value, list):
            raise BadRequest(where, f"expected a JSON array of {_shape(target)}")
        for item in items:
            if not isinstance(item, dict):
                raise BadRequest(
                    where, f"expected {_shape(target)}, got {type(item).__name__} {item!r:.40}"
                )
            check_shapes(target, item, where + ".")


def _shape(target: Descriptor) -> str:
    names = [f.json_name for f in target.fields]
    example = ", ".join(
        f'"{f.json_name}": true' if f.type == FieldDescriptor.TYPE_BOOL else f'"{f.json_name}": ...'
        for f in target.fields[:2]
    )
    return f"a JSON object ({target.name}) such as {{{example}}}; its fields: {', '.join(names)}"


_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")
_PARSE_LOCATION = re.compile(r"\s*at [\w.\[\]]+\.?$")


def parse_error(exc: json_format.ParseError) -> BadRequest:
    text = str(exc)
    names = _PARSE_FIELD.findall(text)
    # The innermost cause reads best: "Couldn't parse integer: 'x'."
    message = text.split(": ", len(names))[-1] if names else text
    message = _PARSE_LOCATION.sub("", message).strip()
    return BadRequest(".".join(names), message or text)
