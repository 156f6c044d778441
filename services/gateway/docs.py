"""GET /docs: a self-contained HTML page of the OpenAPI document (no CDN, no
scripts): every operation with its parameters, body and response schemas."""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2rem}
details{border:1px solid #ddd;border-radius:6px;margin:.5rem 0;padding:.4rem .8rem}
summary{cursor:pointer}code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:24rem}
.m{display:inline-block;min-width:4.2rem;font-weight:bold;text-transform:uppercase}
.get{color:#0b7}.post{color:#07c}.delete{color:#c33}.put,.patch{color:#b80}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    if ref:
        return str(ref).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<details><summary><span class="m {method}">{_esc(method)}</span> '
        f"<code>{_esc(path)}</code> — {_esc(op.get('summary', ''))}</summary>"
    ]
    if op.get("description"):
        parts.append(f"<p>{_esc(op['description'])}</p>")
    parameters = op.get("parameters", [])
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_esc(p['name'])}</code></td><td>{_esc(p['in'])}</td>"
            f"<td>{_esc(_schema_name(p.get('schema', {})))}</td>"
            f"<td>{_esc(p.get('description', ''))}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>"
            f"{rows}</table>"
        )
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            parts.append(
                f"<p>Body ({_esc(media)}): <code>{_esc(_schema_name(content['schema']))}</code></p>"
            )
    for code, response in op.get("responses", {}).items():
        for media, content in response.get("content", {}).items():
            parts.append(
                f"<p>{_esc(code)} ({_esc(media)}): "
                f"<code>{_esc(_schema_name(content.get('schema', {})))}</code> "
                f"{_esc(response.get('description', ''))}</p>"
            )
    parts.append("</details>")
    return "".join(parts)


def render_docs(document: dict[str, Any]) -> str:
    info = document.get("info", {})
    by_tag: dict[str, list[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            for tag in op.get("tags", ["other"]):
                by_tag.setdefault(tag, []).append(_operation(path, method, op))
    tag_notes = {tag["name"]: tag.get("description", "") for tag in document.get("tags", [])}
    sections = []
    for tag in [t["name"] for t in document.get("tags", [])] + sorted(set(by_tag) - set(tag_notes)):
        if tag not in by_tag:
            continue
        sections.append(f"<h2>{_esc(tag)}</h2><p>{_esc(tag_notes.get(tag, ''))}</p>")
        sections.extend(by_tag[tag])
    schemas = document.get("components", {}).get("schemas", {})
    schema_blocks = "".join(
        f"<details><summary><code>{_esc(name)}</code></summary>"
        f"<pre>{_esc(json.dumps(schema, indent=2))}</pre></details>"
        for name, schema in schemas.items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(info.get('title', 'API'))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_esc(info.get('title', 'API'))} <small>{_esc(info.get('version', ''))}</small></h1>"
        f"<p>{_esc(info.get('description', ''))}</p>"
        '<p>Machine-readable: <a href="/openapi">/openapi</a> (OpenAPI 3.1).</p>'
        f"{''.join(sections)}<h2>Schemas</h2>{schema_blocks}</body></html>"
    )
