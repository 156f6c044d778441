"""A real HTTP server on 127.0.0.1 serving recorded responses (http.server in a thread)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Answer = tuple[int, Any]


@contextlib.contextmanager
def recorded_server(
    routes: dict[str, Answer | Callable[[bytes], Answer]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve `routes` {path: (status, JSON body or bytes)}; yields (base URL, request log).

    GET and POST both answer by path; POST bodies are logged for assertions. A
    route may be a function of the request body (a JSON-RPC endpoint answering
    by method).
    """
    log: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            log.append(
                {
                    "method": self.command,
                    "path": parts.path,
                    "query": parts.query,
                    "body": body,
                    "host": self.headers.get("host", ""),
                    "authorization": self.headers.get("authorization", ""),
                }
            )
            route = routes.get(parts.path, (404, {"error": "not found"}))
            status, payload = route(body) if callable(route) else route
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
