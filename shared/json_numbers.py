"""Numbers JSON cannot carry: NaN, Infinity and values beyond a double's range
(Python's json reads them, protobuf and our stores cannot write them back).
`non_finite_path` finds the first one and names where it is."""

from __future__ import annotations

import math
from typing import Any

# Beyond this an integer is no longer a number any proto field or a double holds.
_MAX_INT = 2**64


class NonFinite(float):
    """A number the JSON text spelled that is not a finite double (kept to be reported)."""


def parse_constant(text: str) -> NonFinite:
    """json.loads(parse_constant=...): NaN, Infinity and -Infinity."""
    return NonFinite(float(text))


def parse_float(text: str) -> float:
    """json.loads(parse_float=...): 1e400 and the like overflow to infinity."""
    value = float(text)
    return value if math.isfinite(value) else NonFinite(value)


def non_finite_path(data: Any, where: str = "") -> str | None:
    """The JSON path of the first NaN, infinity or out-of-range number, or None."""
    stack: list[tuple[str, Any]] = [(where, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                return path or "(body)"
        elif isinstance(value, int):
            if abs(value) >= _MAX_INT:
                return path or "(body)"
        elif isinstance(value, dict):
            for key in reversed(list(value)):
                stack.append((f"{path}.{key}" if path else str(key), value[key]))
        elif isinstance(value, list | tuple):
            for index in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{index}]", value[index]))
    return None
