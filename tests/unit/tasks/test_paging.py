"""Page tokens: opaque, round-trip the cursor, bound to their filters."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from services.tasks.errors import InvalidPageToken
from services.tasks.model import AppConfigType, Cursor, ListFilter, TaskStatus
from services.tasks.paging import decode_page_token, encode_page_token

CURSOR = Cursor(
    datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC), "0bad0000-0000-4000-8000-00000000000a"
)
FILTER = ListFilter(status=TaskStatus.QUEUED, app_id="app-1", app_config_type=AppConfigType.REDPILL)


def test_token_round_trips_the_cursor_to_the_microsecond() -> None:
    token = encode_page_token(CURSOR, FILTER)
    assert decode_page_token(token, FILTER) == CURSOR


def test_token_is_opaque_url_safe_text() -> None:
    token = encode_page_token(CURSOR, FILTER)
    assert all(c.isalnum() or c in "-_" for c in token)
    assert "app-1" not in token


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", FILTER) is None


@pytest.mark.parametrize(
    "other",
    [
        ListFilter(status=TaskStatus.ACTIVE, app_id="app-1", app_config_type=AppConfigType.REDPILL),
        ListFilter(status=TaskStatus.QUEUED, app_id="app-2", app_config_type=AppConfigType.REDPILL),
        ListFilter(status=TaskStatus.QUEUED, app_id="app-1"),
        ListFilter(
            status=TaskStatus.QUEUED,
            app_id="app-1",
            app_config_type=AppConfigType.REDPILL,
            created_after=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    ],
)
def test_token_used_with_other_filters_is_refused(other: ListFilter) -> None:
    token = encode_page_token(CURSOR, FILTER)
    with pytest.raises(InvalidPageToken) as caught:
        decode_page_token(token, other)
    assert caught.value.field == "page_token"


def _b64(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "bm90IGpzb24",
        _b64([1, 2]),
        _b64({"v": 2, "t": 1, "i": "0bad0000-0000-4000-8000-00000000000a", "f": "x"}),
        _b64({"v": 1, "t": "soon", "i": "0bad0000-0000-4000-8000-00000000000a", "f": "x"}),
        _b64({"v": 1, "t": 1, "i": "not-a-uuid", "f": "x"}),
        _b64({"v": 1, "t": 10**30, "i": "0bad0000-0000-4000-8000-00000000000a", "f": "x"}),
        "a" * 600,
    ],
)
def test_malformed_token_is_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, FILTER)
