"""REST/JSON <-> protobuf, driven by descriptors only (pure, no I/O, no grpc).

Requests: the path variables, the query parameters and the JSON body are merged
into one proto3-JSON object (path wins), which `json_format.ParseDict` turns
into the request message. Before that, one walk over the object by descriptor
rejects unknown fields (naming them) and turns REST enum values into their
proto names.

Responses: `json_format.MessageToDict` with lowerCamelCase names (json_name
kept, e.g. dnsCAA) and fields without presence printed, then one walk by
descriptor that renders enum values the REST way and 64-bit integers as JSON
numbers (the reference API's shapes; counts never reach 2^53).

REST enum values: the value name without the UPPER_SNAKE prefix of its enum
type, in lower case (APP_CONFIG_TYPE_PHALA_CLOUD of AppConfigType ->
"phala_cloud"). Input also accepts the full names and the numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from services.gateway.catalog import HttpRoute
from services.gateway.errors import BadRequest, MalformedJson, UnknownField
from shared.json_numbers import non_finite_path, parse_constant, parse_float
from shared.jsonnum import whole_numbers

WELL_KNOWN_PREFIX = "google.protobuf."
# Well-known types whose JSON form is a string (allowed as query parameters).
STRING_WELL_KNOWN = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


# --- descriptor access ---------------------------------------------------------------
# protobuf's stubs type a field's message_type/enum_type as optional and a class's
# DESCRIPTOR as the pure-Python or the upb class; these helpers say what holds.


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    return cast(Descriptor, field.message_type)


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field."""
    return cast(EnumDescriptor, field.enum_type)


def descriptor_of(message: type[Message] | Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def field_of(descriptor: Descriptor, name: str) -> FieldDescriptor:
    field: FieldDescriptor = descriptor.fields_by_name[name]
    return field


# --- enums --------------------------------------------------------------------------


def enum_prefix(enum: EnumDescriptor) -> str:
    """AppConfigType -> "APP_CONFIG_TYPE_"."""
    return _CAMEL_BOUNDARY.sub("_", enum.name).upper() + "_"


@dataclass(frozen=True)
class EnumNames:
    """The REST names of one enum's values, both ways."""

    alias_by_name: Mapping[str, str]
    name_by_input: Mapping[str, str]
    name_by_number: Mapping[int, str]

    @property
    def aliases(self) -> list[str]:
        return list(self.alias_by_name.values())


@cache
def enum_names(enum: EnumDescriptor) -> EnumNames:
    prefix = enum_prefix(enum)
    aliases = {
        value.name: (value.name[len(prefix) :] if value.name.startswith(prefix) else value.name)
        .lower()
        .strip("_")
        or value.name.lower()
        for value in enum.values
    }
    if len(set(aliases.values())) != len(aliases):
        # Two values would read the same: keep the full names for this enum.
        aliases = {name: name for name in aliases}
    by_input: dict[str, str] = {}
    for name, alias in aliases.items():
        by_input[name] = name
        by_input[alias] = name
    return EnumNames(
        alias_by_name=aliases,
        name_by_input=by_input,
        name_by_number={value.number: value.name for value in enum.values},
    )


def enum_input(enum: EnumDescriptor, value: Any, where: str) -> Any:
    """The proto name for a REST value (alias, full name, or number), or BadRequest."""
    names = enum_names(enum)
    if isinstance(value, str):
        found = names.name_by_input.get(value) or names.name_by_input.get(value.lower())
        if found is None and value.lstrip("-").isdigit():
            found = names.name_by_number.get(int(value))
        if found is not None:
            return found
    elif isinstance(value, int) and not isinstance(value, bool) and value in names.name_by_number:
        return names.name_by_number[value]
    raise BadRequest(where, f"unknown value {value!r}; expected one of {', '.join(names.aliases)}")


# --- field lookup -------------------------------------------------------------------


def is_well_known(descriptor: Descriptor) -> bool:
    return bool(descriptor.full_name.startswith(WELL_KNOWN_PREFIX))


def is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and message_of(field).GetOptions().map_entry
    )


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@cache
def fields_by_json_key(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """A message's fields by every name JSON input may use (json_name and proto name)."""
    found: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        found[field.name] = field
        found[field.json_name] = field
    return found


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


# --- input --------------------------------------------------------------------------


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
        data[key] = _normalize_field(field, value, path)
    return data


def _normalize_field(field: FieldDescriptor, value: Any, where: str) -> Any:
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
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise BadRequest(where, f"expected true or false, got {text!r}")
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        try:
            number = int(text.strip())
        except ValueError:
            raise BadRequest(where, f"expected an integer, got {text!r}") from None
        if not low <= number <= high:
            raise BadRequest(where, f"{number} is out of range [{low}, {high}]")
        return number
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


def _resolve_query_key(
    descriptor: Descriptor, key: str
) -> tuple[tuple[str, ...], list[FieldDescriptor]] | None:
    """`a.bC` -> (("a", "b_c"), [fields]) when every part names a field, else None."""
    names: list[str] = []
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in key.split("."):
        if current is None:
            return None
        field = fields_by_json_key(current).get(part)
        if field is None:
            return None
        names.append(field.name)
        chain.append(field)
        if (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not is_repeated(field)
            and not is_well_known(message_of(field))
        ):
            current = message_of(field)
        else:
            current = None
    return tuple(names), chain


def _set_path(target: dict[str, Any], chain: list[FieldDescriptor], value: Any) -> dict[str, Any]:
    """Set `value` at the field chain in a JSON object (json names); returns the parent."""
    for field in chain[:-1]:
        child = target.setdefault(field.json_name, {})
        if not isinstance(child, dict):
            raise BadRequest(field.json_name, "conflicting values")
        target = child
    target[chain[-1].json_name] = value
    return target


def query_to_json(
    descriptor: Descriptor,
    pairs: Iterable[tuple[str, str]],
    excluded: Iterable[tuple[str, ...]] = (),
) -> dict[str, Any]:
    """Query parameters (json or proto names, dotted for nested fields) as a JSON object.

    A repeated field takes the parameter several times; an empty value of a
    non-string field means "not given" (as HTML forms send unset filters).
    """
    blocked = {tuple(path) for path in excluded}
    out: dict[str, Any] = {}
    seen: set[tuple[str, ...]] = set()
    for key, text in pairs:
        resolved = _resolve_query_key(descriptor, key)
        if resolved is None:
            raise UnknownField(key, where="query")
        names, chain = resolved
        if any(names[: len(path)] == path for path in blocked):
            raise UnknownField(key, where="query")
        field = chain[-1]
        if is_map(field):
            raise BadRequest(key, "a map field cannot be set from a query parameter")
        if text == "" and field.type not in (
            FieldDescriptor.TYPE_STRING,
            FieldDescriptor.TYPE_BYTES,
        ):
            continue
        value = parse_scalar(field, text, key)
        if is_repeated(field):
            parent = out
            for step in chain[:-1]:
                parent = parent.setdefault(step.json_name, {})
            parent.setdefault(field.json_name, []).append(value)
            continue
        if names in seen:
            raise BadRequest(key, "given more than once")
        seen.add(names)
        _set_path(out, chain, value)
    return out


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


def build_request(
    route: HttpRoute,
    path_values: Mapping[tuple[str, ...], str],
    query: Iterable[tuple[str, str]],
    raw_body: bytes,
) -> Message:
    """The request message for an HTTP request on `route` (BadRequest when it cannot be)."""
    descriptor = descriptor_of(route.rpc.request_class)
    data: dict[str, Any]
    body_field = route.body
    if body_field == "*":
        query_pairs = list(query)
        if query_pairs:
            raise UnknownField(query_pairs[0][0], where="query")
        body = parse_body(raw_body)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest("", "the body must be a JSON object")
        data = normalize_input(descriptor, body)
    else:
        excluded: list[tuple[str, ...]] = list(route.path_fields)
        if body_field:
            excluded.append((body_field,))
        data = query_to_json(descriptor, query, excluded)
        if body_field:
            body = parse_body(raw_body)
            if body is not None:
                field = field_of(descriptor, body_field)
                data[field.json_name] = _normalize_field(field, body, field.json_name)
    for path, text in path_values.items():
        chain = _field_chain(descriptor, path)
        where = ".".join(field.json_name for field in chain)
        parent = data
        for step in chain[:-1]:
            # The body may have named the field by its proto name: drop that spelling.
            if step.name != step.json_name:
                parent.pop(step.name, None)
            child = parent.setdefault(step.json_name, {})
            if not isinstance(child, dict):
                raise BadRequest(where, "conflicts with the path")
            parent = child
        leaf = chain[-1]
        parent.pop(leaf.name, None)
        parent[leaf.json_name] = parse_scalar(leaf, text, where)
    message = route.rpc.request_class()
    check_shapes(descriptor, data)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise _parse_error(exc) from None
    except RecursionError:
        raise BadRequest("", "the body nests too deeply") from None
    return message


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


def _field_chain(descriptor: Descriptor, path: tuple[str, ...]) -> list[FieldDescriptor]:
    chain = []
    current = descriptor
    for name in path:
        field = field_of(current, name)
        chain.append(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            current = message_of(field)
    return chain


_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")
_PARSE_LOCATION = re.compile(r"\s*at [\w.\[\]]+\.?$")


def _parse_error(exc: json_format.ParseError) -> BadRequest:
    text = str(exc)
    names = _PARSE_FIELD.findall(text)
    # The innermost cause reads best: "Couldn't parse integer: 'x'."
    message = text.split(": ", len(names))[-1] if names else text
    message = _PARSE_LOCATION.sub("", message).strip()
    return BadRequest(".".join(names), message or text)


# --- output -------------------------------------------------------------------------


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
