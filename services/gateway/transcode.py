"""REST/JSON -> protobuf requests, driven by descriptors only (pure, no I/O, no grpc).

The path variables, the query parameters and the JSON body are merged into one
proto3-JSON object (path wins), checked by shape (shapes.py: unknown fields
named, REST enum values turned into proto names), which `json_format.ParseDict`
turns into the request message. Responses go the other way in rest_json.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.gateway.catalog import HttpRoute
from services.gateway.descriptors import (
    descriptor_of,
    field_of,
    fields_by_json_key,
    is_map,
    is_repeated,
    is_well_known,
    message_of,
)
from services.gateway.errors import BadRequest, UnknownField
from services.gateway.shapes import (
    check_shapes,
    normalize_field,
    normalize_input,
    parse_body,
    parse_error,
    parse_scalar,
)


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


def build_request(
    route: HttpRoute,
    path_values: Mapping[tuple[str, ...], str],
    query: Iterable[tuple[str, str]],
    raw_body: bytes,
) -> Message:
    """The request message for an HTTP request on `route` (BadRequest when it cannot be)."""
    descriptor = descriptor_of(route.rpc.request_class)
    if route.body == "*":
        data = _whole_body(descriptor, query, raw_body)
    else:
        data = _query_and_body_field(descriptor, route, query, raw_body)
    for path, text in path_values.items():
        _set_path_value(data, _field_chain(descriptor, path), text)
    message = route.rpc.request_class()
    check_shapes(descriptor, data)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise parse_error(exc) from None
    except RecursionError:
        raise BadRequest("", "the body nests too deeply") from None
    return message


def _whole_body(
    descriptor: Descriptor, query: Iterable[tuple[str, str]], raw_body: bytes
) -> dict[str, Any]:
    """`body: "*"`: the request is the body (a JSON object); no query parameters."""
    query_pairs = list(query)
    if query_pairs:
        raise UnknownField(query_pairs[0][0], where="query")
    body = parse_body(raw_body)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("", "the body must be a JSON object")
    data: dict[str, Any] = normalize_input(descriptor, body)
    return data


def _query_and_body_field(
    descriptor: Descriptor, route: HttpRoute, query: Iterable[tuple[str, str]], raw_body: bytes
) -> dict[str, Any]:
    """The query parameters, and the body as the one field `route.body` names
    (if any); neither may set a field of the path."""
    excluded: list[tuple[str, ...]] = list(route.path_fields)
    if route.body:
        excluded.append((route.body,))
    data = query_to_json(descriptor, query, excluded)
    if route.body:
        body = parse_body(raw_body)
        if body is not None:
            field = field_of(descriptor, route.body)
            data[field.json_name] = normalize_field(field, body, field.json_name)
    return data


def _set_path_value(data: dict[str, Any], chain: list[FieldDescriptor], text: str) -> None:
    """A path variable into the request object: it wins over the query and body."""
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


def _field_chain(descriptor: Descriptor, path: tuple[str, ...]) -> list[FieldDescriptor]:
    chain = []
    current = descriptor
    for name in path:
        field = field_of(current, name)
        chain.append(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            current = message_of(field)
    return chain
