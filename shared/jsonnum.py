"""Whole numbers across google.protobuf.Struct.

Struct holds every JSON number as a double, so 16 comes back as 16.0 and a
re-serialised document no longer matches the text that was signed. Signed
documents are written with whole numbers as integers (whole_numbers before
canonical JSON), and readers apply the same function to what a Struct gives
back: the round trip is then exact for every integer a double holds
exactly (|n| <= 2**53).
"""

from __future__ import annotations

from typing import Any

MAX_EXACT = 2**53


def whole_numbers(value: Any) -> Any:
    """`value` with every float that is a whole number (and exact) as an int."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= MAX_EXACT else value
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value
