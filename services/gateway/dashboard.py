"""GET /dashboard: the operations dashboard, a static page and its script over the
gateway's own REST API (no build step, no CDN). Read once at start; served with a
strict Content-Security-Policy (scripts from this origin only, no inline script)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

_STATIC = Path(__file__).resolve().parent / "static"
_HTML = (_STATIC / "dashboard.html").read_bytes()
_SCRIPT = (_STATIC / "dashboard.js").read_bytes()
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PATHS = frozenset({"/dashboard", "/dashboard.js"})


async def page(request: Request) -> Response:
    return Response(_HTML, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def script(request: Request) -> Response:
    return Response(_SCRIPT, media_type="text/javascript; charset=utf-8", headers=_HEADERS)
