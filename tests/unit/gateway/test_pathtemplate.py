"""google.api.http path templates: parsing, matching, verbs, encoded slashes."""

from __future__ import annotations

import pytest

from services.gateway.pathtemplate import TemplateError, parse_template


def test_single_variable_binds_one_segment() -> None:
    template = parse_template("/api/v1/tasks/{id}")
    assert template.match("/api/v1/tasks/abc") == {("id",): "abc"}
    assert template.match("/api/v1/tasks/abc/events") is None
    assert template.match("/api/v1/tasks/") is None


def test_custom_verb_is_split_from_the_last_segment() -> None:
    template = parse_template("/api/v1/tasks/{id}:watch")
    assert template.verb == "watch"
    assert template.match("/api/v1/tasks/abc:watch") == {("id",): "abc"}
    assert template.match("/api/v1/tasks/abc") is None
    assert template.openapi_path == "/api/v1/tasks/{id}:watch"


def test_encoded_slash_stays_inside_one_segment_and_is_decoded() -> None:
    template = parse_template("/api/v1/tasks/{id}")
    assert template.match("/api/v1/tasks/a%2Fb%20c") == {("id",): "a/b c"}


def test_nested_field_path_and_segment_pattern() -> None:
    template = parse_template("/v1/{shelf.name=shelves/*}/books/{book}")
    assert template.match("/v1/shelves/s1/books/b2") == {
        ("shelf", "name"): "shelves/s1",
        ("book",): "b2",
    }
    assert template.openapi_path == "/v1/{shelf.name}/books/{book}"


def test_double_wildcard_spans_segments() -> None:
    template = parse_template("/files/{path=**}")
    assert template.match("/files/a/b/c.txt") == {("path",): "a/b/c.txt"}


def test_more_specific_templates_sort_first() -> None:
    templates = [
        parse_template("/api/v1/tasks/{id}"),
        parse_template("/api/v1/tasks/stats/summary"),
        parse_template("/api/v1/tasks/{id}:watch"),
    ]
    ordered = sorted(templates, key=lambda t: t.specificity)
    assert [t.template for t in ordered] == [
        "/api/v1/tasks/{id}:watch",
        "/api/v1/tasks/stats/summary",
        "/api/v1/tasks/{id}",
    ]


@pytest.mark.parametrize(
    "text", ["api/v1", "/v1/{id", "/v1/{1bad}", "/v1/**/x", "/v1/{id}:", "/v1/a b"]
)
def test_malformed_template_is_rejected(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(text)
