"""Strict hex decoding that names the offending field."""

from __future__ import annotations

import string

from .errors import EvidenceMalformed

_HEX = frozenset(string.hexdigits)


def _strip_prefix(text: str) -> str:
    return text[2:] if text[:2] in ("0x", "0X") else text


def _decode_or_explain(value: str, field: str) -> bytes:
    """The slow path: say exactly what is wrong with `value`."""
    text = _strip_prefix(value.strip())
    if len(text) % 2:
        raise EvidenceMalformed(field, f"hex string has odd length ({len(text)} digits)")
    if not _HEX.issuperset(text):
        bad = next(ch for ch in text if ch not in _HEX)
        raise EvidenceMalformed(field, f"not a hex string (unexpected character {bad!r})")
    return bytes.fromhex(text)


def decode_hex(value: str, field: str, *, expected_len: int | None = None) -> bytes:
    """Decode hex (an optional 0x prefix allowed) or raise EvidenceMalformed naming `field`."""
    text = _strip_prefix(value)
    try:
        # Fast path: event logs hold hundreds of these. fromhex skips inner
        # whitespace, so the length comparison keeps the input strict.
        raw = bytes.fromhex(text)
        if len(raw) * 2 != len(text):
            raw = _decode_or_explain(value, field)
    except ValueError:
        raw = _decode_or_explain(value, field)
    if expected_len is not None and len(raw) != expected_len:
        raise EvidenceMalformed(field, f"expected {expected_len} bytes, got {len(raw)}")
    return raw


def normalize_hex(value: str) -> str:
    """Lower-case hex without 0x, for comparisons of identifiers such as app ids."""
    text = value.strip().lower()
    return text[2:] if text.startswith("0x") else text
