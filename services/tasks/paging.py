"""Opaque ListTasks page tokens: base64 of the keyset cursor (created_at, id)
and a hash of the filters, so a token replayed with other filters is refused
instead of silently returning a wrong page. Pure."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime

from .errors import InvalidPageToken
from .model import Cursor, ListFilter, ListQuery, TaskPage
from .validation import validate_page_size

_VERSION = 1
MAX_TOKEN_LENGTH = 512


def filter_fingerprint(list_filter: ListFilter) -> str:
    """A short hash of the filters a page token belongs to."""

    def moment(value: datetime | None) -> str:
        return "" if value is None else _micros(value).__str__()

    canonical = "|".join(
        [
            list_filter.status.value if list_filter.status else "",
            list_filter.app_id,
            list_filter.app_config_type.value if list_filter.app_config_type else "",
            moment(list_filter.created_after),
            moment(list_filter.created_before),
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(micros: int) -> datetime:
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)


def encode_page_token(cursor: Cursor, list_filter: ListFilter) -> str:
    body = {
        "v": _VERSION,
        "t": _micros(cursor.created_at),
        "i": cursor.id,
        "f": filter_fingerprint(list_filter),
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, list_filter: ListFilter) -> Cursor | None:
    """The cursor a token carries (None for an empty token); InvalidPageToken otherwise."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidPageToken("too long; pass the next_page_token of the previous page")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != _VERSION:
            raise ValueError("unknown token version")
        micros = body["t"]
        task_id = body["i"]
        fingerprint = body["f"]
        if not isinstance(micros, int) or not isinstance(task_id, str):
            raise ValueError("malformed cursor")
        cursor = Cursor(created_at=_from_micros(micros), id=str(uuid.UUID(task_id)))
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error):
        raise InvalidPageToken("malformed; pass the next_page_token of the previous page") from None
    if fingerprint != filter_fingerprint(list_filter):
        raise InvalidPageToken("was issued for other filters; keep the filters between pages")
    return cursor


def page_query(list_filter: ListFilter, page_size: int, page_token: str) -> ListQuery:
    """A ListTasks query for one page: its size checked, its token read for this filter."""
    return ListQuery(
        filter=list_filter,
        page_size=validate_page_size(page_size),
        after=decode_page_token(page_token, list_filter),
    )


def next_page_token(page: TaskPage, list_filter: ListFilter) -> str:
    """The token of the page after `page` (empty after the last)."""
    return encode_page_token(page.next_cursor, list_filter) if page.next_cursor else ""
