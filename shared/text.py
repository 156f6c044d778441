"""Free text on the wire (reasons, names, messages): one rule for every
service, so a reason one service accepts is never refused by the next one it
forwards it to."""

from __future__ import annotations

import re

from shared.errors import InvalidArgument

# An operator's reason (cancel, discard, retry): recorded in the audit trail.
MAX_REASON = 512

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bounded_text(field: str, value: str, limit: int, *, single_line: bool = True) -> str:
    """`value` itself, or INVALID_ARGUMENT naming `field` when it is longer than
    `limit` or (single_line) holds a control character."""
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters, got {len(value)}")
    if single_line and _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")
    return value
