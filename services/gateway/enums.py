"""REST enum values (pure): the value name without the UPPER_SNAKE prefix of its
enum type, in lower case (APP_CONFIG_TYPE_PHALA_CLOUD of AppConfigType ->
"phala_cloud"). Input also accepts the full names and the numbers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf.descriptor import EnumDescriptor

from services.gateway.errors import BadRequest

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


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
