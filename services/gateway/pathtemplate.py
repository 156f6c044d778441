"""google.api.http path templates: parsing and matching (pure, no I/O).

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template compiles to one regular expression over the raw (still
percent-encoded) request path, so an encoded "/" inside an id never splits a
segment; captured values are percent-decoded afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=@%-]+$")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


@dataclass(frozen=True)
class Variable:
    """One `{field.path=segments}` of a template."""

    field_path: tuple[str, ...]
    # True when it may span several segments ("**" or more than one segment).
    multi_segment: bool


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template; `match` returns the bound field values or None."""

    template: str
    variables: tuple[Variable, ...]
    verb: str
    literal_segments: int
    _regex: re.Pattern[str]

    def match(self, raw_path: str) -> dict[tuple[str, ...], str] | None:
        found = self._regex.match(raw_path)
        if found is None:
            return None
        values: dict[tuple[str, ...], str] = {}
        for variable, raw in zip(self.variables, found.groups(), strict=True):
            if variable.multi_segment:
                # Reserved expansion: an encoded "/" stays encoded (http.proto).
                values[variable.field_path] = "/".join(unquote(part) for part in raw.split("/"))
            else:
                values[variable.field_path] = unquote(raw)
        return values

    @property
    def openapi_path(self) -> str:
        """The template as an OpenAPI path: `{field.path}` placeholders, verb kept."""
        path = _strip_variable_patterns(self.template)
        return path

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Sort key: templates with a verb, then more literals, then fewer variables first."""
        return (0 if self.verb else 1, -self.literal_segments, len(self.variables))


def _strip_variable_patterns(template: str) -> str:
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template)


def _split_segments(text: str) -> list[str]:
    """Split on "/" outside braces."""
    segments: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError("unbalanced '}'")
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise TemplateError("unbalanced '{'")
    segments.append(current)
    return segments


def _wildcard_regex(segments: list[str]) -> tuple[str, bool, int]:
    """Regex for the segments inside a variable (or bare wildcards); literals count."""
    parts: list[str] = []
    multi = len(segments) > 1
    literals = 0
    for index, segment in enumerate(segments):
        if segment == "*":
            parts.append(r"[^/]+")
        elif segment == "**":
            if index != len(segments) - 1:
                raise TemplateError("'**' must be the last segment")
            parts.append(r".+")
            multi = True
        elif _LITERAL.match(segment):
            parts.append(re.escape(segment))
            literals += 1
        else:
            raise TemplateError(f"bad segment {segment!r}")
    return "/".join(parts), multi, literals


def parse_template(template: str) -> PathTemplate:
    """Parse a google.api.http path template, or raise TemplateError."""
    if not template.startswith("/"):
        raise TemplateError(f"template must start with '/': {template!r}")
    body = template[1:]
    verb = ""
    # The verb is a ":" after the last "/" that is not inside braces.
    last_slash_outside = -1
    depth = 0
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            last_slash_outside = index
    tail_start = last_slash_outside + 1
    depth = 0
    for index in range(tail_start, len(body)):
        char = body[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ":" and depth == 0:
            verb = body[index + 1 :]
            body = body[:index]
            if not _LITERAL.match(verb):
                raise TemplateError(f"bad verb {verb!r}")
            break
    pieces: list[str] = []
    variables: list[Variable] = []
    literals = 0
    segments = _split_segments(body)
    for index, segment in enumerate(segments):
        if segment == "**" and index != len(segments) - 1:
            raise TemplateError("'**' must be the last segment")
        if segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"bad variable {segment!r}")
            inner = segment[1:-1]
            field_path, _, pattern = inner.partition("=")
            if not _IDENT.match(field_path):
                raise TemplateError(f"bad field path {field_path!r}")
            regex, multi, inner_literals = _wildcard_regex(
                _split_segments(pattern) if pattern else ["*"]
            )
            literals += inner_literals
            variables.append(Variable(tuple(field_path.split(".")), multi))
            pieces.append(f"({regex})")
        elif segment in ("*", "**"):
            regex, _, _ = _wildcard_regex([segment])
            pieces.append(f"(?:{regex})")
        elif segment and _LITERAL.match(segment):
            pieces.append(re.escape(segment))
            literals += 1
        else:
            raise TemplateError(f"bad segment {segment!r} in {template!r}")
    regex = "^/" + "/".join(pieces) + (re.escape(":" + verb) if verb else "") + "$"
    return PathTemplate(template, tuple(variables), verb, literals, re.compile(regex))
