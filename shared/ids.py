"""Task ids on the wire: canonical lowercase UUIDs (8-4-4-4-12 hex), the form
the tasks service makes. Every route refuses any other spelling the same way,
so `/tasks/<UPPERCASE>` and `/tasks/<UPPERCASE>/report` agree."""

from __future__ import annotations

import re

from shared.errors import InvalidArgument

_CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def canonical_task_id(value: str, field: str = "id") -> str:
    """The id itself, or INVALID_ARGUMENT naming `field`."""
    if not value:
        raise InvalidArgument(field, "required")
    if not _CANONICAL.match(value):
        raise InvalidArgument(
            field, f"not a task id (a lowercase UUID, 8-4-4-4-12 hex digits): {value[:64]!r}"
        )
    return value
