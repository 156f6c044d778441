"""Protobuf descriptors as the gateway reads them (pure, no I/O, no grpc): typed
access to a field's message or enum type, field lookup by the names JSON may
use, and the kinds of field the REST form treats apart (well-known types,
wrappers, maps, 64-bit integers)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

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
INT_RANGES: dict[int, tuple[int, int]] = {
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
