"""The OpenAPI 3.1 document, generated from the routes' descriptors (pure).

Paths and operations come from the google.api.http rules; parameters from the
path variables and the request fields left for the query; schemas from the
messages (lowerCamelCase json names, REST enum values, field_behavior as
readOnly/required); descriptions from the proto comments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from services.gateway.catalog import HttpRoute
from services.gateway.descriptors import (
    STRING_WELL_KNOWN,
    WRAPPERS,
    descriptor_of,
    enum_of,
    field_of,
    is_map,
    is_repeated,
    is_well_known,
    message_of,
)
from services.gateway.enums import enum_names

OPENAPI_VERSION = "3.1.0"
ERROR_SCHEMA = "Error"
_REF = "#/components/schemas/"
_QUERY_DEPTH = 3

_INTEGER_FORMATS: dict[int, tuple[str, int, int]] = {
    FieldDescriptor.TYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: ("int64", 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("int64", 0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: ("int64", 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("int64", 0, 2**64 - 1),
}

_WELL_KNOWN_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 time, e.g. 2026-03-05T10:50:03Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an s suffix, e.g. 1.5s.",
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}


def _behaviors(field: FieldDescriptor) -> set[int]:
    options = field.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior])


def _summary(text: str) -> str:
    """The first sentence of a comment."""
    for end in (". ", ".\n"):
        if end in text:
            return text.split(end, 1)[0] + "."
    return text


class DocumentBuilder:
    """Collects component schemas while building operations."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, dict[str, Any]] = {}

    # --- schemas ---------------------------------------------------------------------

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": _REF + name}

    def enum_schema(self, enum: EnumDescriptor) -> dict[str, Any]:
        name = enum.full_name
        if name not in self.schemas:
            names = enum_names(enum)
            lines = [self.comments.get(name, "")]
            for value in enum.values:
                note = self.comments.get(f"{name}.{value.name}", "")
                lines.append(f"- `{names.alias_by_name[value.name]}`: {note}".rstrip(": "))
            lines.append(
                "Input also accepts the full value names "
                f"({enum.values[0].name}, ...) and their numbers."
            )
            self.schemas[name] = {
                "type": "string",
                "enum": names.aliases,
                "description": "\n".join(line for line in lines if line),
            }
        return self.ref(name)

    def message_schema(self, message: Descriptor, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """A $ref to the message's component (built once), or an inline variant without
        the `exclude` fields (a body whose fields are partly bound by the path)."""
        excluded = set(exclude)
        if message.full_name in _WELL_KNOWN_SCHEMAS:
            return dict(_WELL_KNOWN_SCHEMAS[message.full_name])
        if message.full_name in WRAPPERS:
            inner = self.field_schema(field_of(message, "value"))
            return {"anyOf": [inner, {"type": "null"}]}
        if excluded:
            return self._object(message, excluded)
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: recursive types
            self.schemas[message.full_name] = self._object(message, set())
        return self.ref(message.full_name)

    def _object(self, message: Descriptor, excluded: set[str]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name in excluded:
                continue
            schema = self.field_schema(field)
            behaviors = _behaviors(field)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.json_name)
            description = self.comments.get(f"{message.full_name}.{field.name}", "")
            if field_behavior_pb2.IMMUTABLE in behaviors:
                description = f"{description} Set at creation; never changes.".strip()
            if description:
                schema["description"] = description
            properties[field.json_name] = schema
        body: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            body["required"] = required
        description = self.comments.get(message.full_name, "")
        if description:
            body["description"] = description
        return body

    def field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value_field = field_of(message_of(field), "value")
            return {"type": "object", "additionalProperties": self.single_schema(value_field)}
        single = self.single_schema(field)
        if is_repeated(field):
            return {"type": "array", "items": single}
        return single

    def single_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            return self.message_schema(message_of(field))
        if kind == FieldDescriptor.TYPE_ENUM:
            if enum_of(field).full_name == "google.protobuf.NullValue":
                return {"type": "null"}
            return self.enum_schema(enum_of(field))
        if kind in _INTEGER_FORMATS:
            fmt, low, high = _INTEGER_FORMATS[kind]
            return {"type": "integer", "format": fmt, "minimum": low, "maximum": high}
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if kind == FieldDescriptor.TYPE_FLOAT:
            return {"type": "number", "format": "float"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    # --- operations ------------------------------------------------------------------

    def query_parameters(
        self,
        message: Descriptor,
        excluded: set[tuple[str, ...]],
        prefix: tuple[str, ...] = (),
        json_prefix: tuple[str, ...] = (),
    ) -> list[dict[str, Any]]:
        """The fields a client may set from the query, dotted for nested messages."""
        parameters: list[dict[str, Any]] = []
        for field in message.fields:
            path = (*prefix, field.name)
            if path in excluded or is_map(field):
                continue
            json_path = ".".join([*json_prefix, field.json_name])
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                full_name = message_of(field).full_name
                if full_name in STRING_WELL_KNOWN or full_name in WRAPPERS:
                    pass
                elif (
                    not is_repeated(field)
                    and not is_well_known(message_of(field))
                    and len(prefix) < _QUERY_DEPTH
                ):
                    parameters.extend(
                        self.query_parameters(
                            message_of(field), excluded, path, (*json_prefix, field.json_name)
                        )
                    )
                    continue
                else:
                    continue
            schema = self.field_schema(field)
            if (
                field.type == FieldDescriptor.TYPE_MESSAGE
                and message_of(field).full_name in WRAPPERS
            ):
                schema = self.single_schema(field_of(message_of(field), "value"))
                if is_repeated(field):
                    schema = {"type": "array", "items": schema}
            parameter: dict[str, Any] = {
                "name": json_path,
                "in": "query",
                "required": False,
                "schema": schema,
            }
            description = self.comments.get(f"{message.full_name}.{field.name}", "")
            if description:
                parameter["description"] = description
            if is_repeated(field):
                parameter["style"] = "form"
                parameter["explode"] = True
            parameters.append(parameter)
        return parameters

    def operation(self, route: HttpRoute) -> dict[str, Any]:
        rpc = route.rpc
        request = descriptor_of(rpc.request_class)
        comment = self.comments.get(f"{rpc.service.full_name}.{rpc.method.name}", "")
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "tags": [rpc.service.name],
            "summary": _summary(comment) if comment else rpc.method.name,
        }
        if comment and comment != operation["summary"]:
            operation["description"] = comment
        parameters: list[dict[str, Any]] = []
        for variable in route.template.variables:
            field = _field_at(request, variable.field_path)
            schema = self.single_schema(field)
            parameter = {
                "name": ".".join(variable.field_path),
                "in": "path",
                "required": True,
                "schema": schema,
            }
            owner = field.containing_type.full_name if field.containing_type else ""
            description = self.comments.get(f"{owner}.{field.name}", "")
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        excluded = {tuple(path) for path in route.path_fields}
        if route.body == "*":
            top_level_path = {path[0] for path in route.path_fields if len(path) == 1}
            schema = self.message_schema(request, top_level_path)
            operation["requestBody"] = {
                "required": _has_required(request),
                "content": {"application/json": {"schema": schema}},
            }
        else:
            if route.body:
                excluded.add((route.body,))
                body_field = field_of(request, route.body)
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": self.field_schema(body_field)}},
                }
            parameters.extend(self.query_parameters(request, excluded))
        if parameters:
            operation["parameters"] = parameters
        response = descriptor_of(rpc.response_class)
        if route.response_body:
            response_schema = self.field_schema(field_of(response, route.response_body))
        else:
            response_schema = self.message_schema(response)
        if rpc.server_streaming:
            ok = {
                "description": (
                    "Server-sent events: each `data:` line is one message as JSON "
                    f"({response.name}); an `end` event closes the stream, an `error` "
                    "event carries an Error."
                ),
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
            # The message schema is still listed, so clients can decode the events.
            self.message_schema(response)
        else:
            ok = {
                "description": _summary(self.comments.get(response.full_name, "")) or "OK",
                "content": {"application/json": {"schema": response_schema}},
            }
        operation["responses"] = {
            "200": ok,
            "default": {
                "description": "An error: the gRPC status mapped to HTTP (google.rpc.Code).",
                "content": {"application/json": {"schema": self.ref(ERROR_SCHEMA)}},
            },
        }
        return operation


def _field_at(message: Descriptor, path: tuple[str, ...]) -> FieldDescriptor:
    field = field_of(message, path[0])
    for name in path[1:]:
        field = field_of(message_of(field), name)
    return field


def _has_required(message: Descriptor) -> bool:
    return any(field_behavior_pb2.REQUIRED in _behaviors(field) for field in message.fields)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An error: google.rpc.Status in JSON, plus the code's name.",
        "properties": {
            "code": {"type": "integer", "description": "The gRPC status code number."},
            "status": {"type": "string", "description": "The gRPC status code name."},
            "message": {"type": "string", "description": "What went wrong, for a person."},
            "details": {
                "type": "array",
                "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
                "description": "google.rpc error details, e.g. BadRequest field violations.",
            },
        },
        "required": ["code", "status", "message", "details"],
    }


def _fixed_paths() -> dict[str, Any]:
    def simple(operation_id: str, summary: str, media: str, codes: Iterable[str]) -> dict[str, Any]:
        schema: dict[str, Any] = (
            {"type": "object"} if media == "application/json" else {"type": "string"}
        )
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["Gateway"],
                "summary": summary,
                "responses": {
                    code: {
                        "description": "OK" if code == "200" else "Something required is down.",
                        "content": {media: {"schema": schema}},
                    }
                    for code in codes
                },
            }
        }

    return {
        "/health": simple(
            "Gateway_Health",
            "The gateway itself: up and accepting requests.",
            "application/json",
            ("200", "503"),
        ),
        "/health/detailed": simple(
            "Gateway_HealthDetailed",
            "Each service's health and its dependencies (PostgreSQL, Redis, S3): "
            "state, latency, version.",
            "application/json",
            ("200", "503"),
        ),
        "/openapi": simple("Gateway_OpenApi", "This document.", "application/json", ("200",)),
        "/docs": simple("Gateway_Docs", "A readable page of this document.", "text/html", ("200",)),
    }


def build_document(
    routes: Iterable[HttpRoute], comments: Mapping[str, str], version: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes."""
    builder = DocumentBuilder(comments)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    ordered = sorted(routes, key=lambda r: (r.template.openapi_path, r.http_method))
    for route in ordered:
        service = route.rpc.service
        tag: dict[str, Any] = {"name": service.name}
        if comments.get(service.full_name):
            tag["description"] = comments[service.full_name]
        tags.setdefault(service.name, tag)
        item = paths.setdefault(route.template.openapi_path, {})
        item[route.http_method.lower()] = builder.operation(route)
    paths.update(_fixed_paths())
    builder.schemas[ERROR_SCHEMA] = _error_schema()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "TEE attestation verifier",
            "version": version,
            "description": (
                "REST/JSON surface of the verifier's gRPC services, generated from the "
                "google.api.http annotations of their contracts. Field names are "
                "lowerCamelCase; enum values are lowercase without their type prefix "
                '("phala_cloud", "completed"); 64-bit integers are JSON numbers. Every '
                "response carries X-Request-Id; "
                "send X-Request-Id to choose it, X-Timeout (e.g. 2.5 or 500ms) to "
                "shorten the deadline."
            ),
        },
        "tags": [*sorted(tags.values(), key=lambda t: t["name"]), {"name": "Gateway"}],
        "paths": paths,
        "components": {"schemas": dict(sorted(builder.schemas.items()))},
    }
