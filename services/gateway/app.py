"""The gateway's ASGI application (Starlette).

Fixed routes: GET /health, GET /health/detailed, GET /openapi (also
/openapi.json), GET /docs. Every other request goes to one generic endpoint
that finds the annotated RPC for the method and path, transcodes the request,
calls the service with the request id in the metadata and the deadline set,
and transcodes the response (unary) or streams it as server-sent events
(server streaming). There is no per-route code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

import shared
from services.gateway import catalog, dashboard
from services.gateway.catalog import HttpRoute, RouteTable
from services.gateway.comments import load_comments
from services.gateway.docs import render_docs
from services.gateway.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    UnsupportedMediaType,
)
from services.gateway.health import detailed_health
from services.gateway.openapi import build_document
from services.gateway.rest_json import dumps, message_to_json, response_to_json
from services.gateway.settings import GatewaySettings
from services.gateway.status import domain_error_response, error_body, rpc_error_response
from services.gateway.transcode import build_request
from services.gateway.upstream import Upstreams, parse_timeout
from shared import errors, metrics
from shared.auth import AUTHORIZATION_METADATA_KEY, WWW_AUTHENTICATE
from shared.context import (
    REQUEST_ID_METADATA_KEY,
    bind_request_id,
    current_request_id,
    sanitize_request_id,
)
from shared.grpc_server import RETRY_AFTER_METADATA_KEY, WWW_AUTHENTICATE_METADATA_KEY
from shared.log import get_logger
from shared.security import public_channel_credentials

log = get_logger(__name__)

JSON = "application/json"
_QUIET_PATHS = frozenset({"/health", "/health/detailed", "/metrics"})
# Served by Starlette; every other path is the generic endpoint's.
FIXED_PATHS = frozenset(
    {"/health", "/health/detailed", "/openapi", "/openapi.json", "/docs", "/metrics"}
    | dashboard.PATHS
)
_READ_HEADERS = frozenset(
    {
        b"content-length",
        b"content-type",
        b"transfer-encoding",
        b"x-timeout",
        b"grpc-timeout",
        b"authorization",
        b"last-event-id",
    }
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers


def require_json(method: str, headers: Mapping[str, str]) -> None:
    """POST/PUT/PATCH with a body must say it is JSON (415 otherwise)."""
    if method not in _BODY_METHODS or not has_body(headers):
        return
    content_type = headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != JSON:
        raise UnsupportedMediaType(content_type)


def call_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The request id, and the caller's authorization passed through unchanged."""
    authorization = headers.get("authorization")
    if authorization:
        return (
            (REQUEST_ID_METADATA_KEY, current_request_id()),
            (AUTHORIZATION_METADATA_KEY, authorization),
        )
    return ((REQUEST_ID_METADATA_KEY, current_request_id()),)


def rpc_error_headers(exc: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """WWW-Authenticate on a 401, Retry-After on a 429, from the service's trailers."""
    wanted = {
        WWW_AUTHENTICATE_METADATA_KEY: "WWW-Authenticate",
        RETRY_AFTER_METADATA_KEY: "Retry-After",
    }
    headers = {
        wanted[key]: value
        for key, value in exc.trailing_metadata() or ()
        if key in wanted and isinstance(value, str)
    }
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return headers or None


# Server-sent events resume by convention: a streaming RPC whose response has
# `last_event_id` gets it as each event's `id:`, and one whose request has
# `after_event_id` gets the client's Last-Event-ID there.
SSE_ID_FIELD = "last_event_id"
SSE_RESUME_FIELD = "after_event_id"


@dataclass
class GatewayState:
    """Everything the endpoints share; built at start, channels opened in the lifespan."""

    settings: GatewaySettings
    routes: RouteTable
    upstreams: Upstreams
    openapi: bytes
    docs: str
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    active_streams: int = 0
    # Set when the server is asked to stop: open streams end so their clients
    # reconnect elsewhere instead of holding the shutdown for its whole grace.
    draining: asyncio.Event | None = None

    def begin_drain(self) -> None:
        """Stop reporting ready and end the open streams (call in the loop's thread)."""
        self.ready = False
        if self.draining is not None:
            self.draining.set()


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON, headers=headers)


def error_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(body, status, headers)


# --- the ASGI entry ---------------------------------------------------------------------


class GatewayApp:
    """The ASGI application. Every request gets its request id (X-Request-Id, or a new
    one) bound for logs and gRPC metadata, returned in the response, and one access
    log line. The fixed endpoints and the lifespan go through Starlette; every other
    path goes straight to the generic endpoint, which is the hot path and so skips
    the framework's routing and exception layers."""

    def __init__(self, state: GatewayState, fixed: Starlette) -> None:
        self.state = state
        self.fixed = fixed
        self._entry: ASGIApp = self._serve

    def wrap_cors(self, origins: list[str]) -> None:
        """Answer CORS preflights and add the CORS headers for these origins."""
        self._entry = CORSMiddleware(
            self._serve,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fixed(scope, receive, send)
            return
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        request_id = sanitize_request_id(request_id)
        bind_request_id(request_id)
        started = time.perf_counter()
        status_holder = [0]
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        path = scope["path"]
        try:
            if path in FIXED_PATHS:
                await self.fixed(scope, receive, send_with_id)
            else:
                response = await transcode(self.state, scope, receive)
                await response(scope, receive, send_with_id)
        except Exception:
            log.exception("http.internal_error", method=scope["method"], path=path)
            if not status_holder[0]:
                body = error_body(
                    grpc.StatusCode.INTERNAL,
                    f"internal error; see the gateway log for request {request_id}",
                )
                await error_response(500, body)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            metrics.http_request(scope["method"], status_holder[0], elapsed)
            log_line = log.debug if path in _QUIET_PATHS else log.info
            log_line(
                "http.request",
                method=scope["method"],
                path=path,
                status=status_holder[0],
                ms=round(elapsed * 1000, 2),
            )


# --- the generic endpoint ---------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The headers the endpoint reads, lower-cased (a repeated header: the last one)."""
    return {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in _READ_HEADERS
    }


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def transcode(state: GatewayState, scope: Scope, receive: Receive) -> Response:
    """Find the annotated RPC for the method and path, call it, answer its result."""
    method: str = scope["method"]
    headers = request_headers(scope)
    try:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        found = state.routes.match(method, path)
        if found is None:
            raise RouteNotFound(method, scope["path"])
        if isinstance(found, list):
            raise MethodNotAllowed(method, found)
        route = found.route
        require_json(method, headers)
        raw_body = b""
        if route.body:
            raw_body = await read_body(receive, headers, state.settings.max_body_bytes)
        query_string = scope["query_string"]
        query = (
            parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
            if query_string
            else []
        )
        message = build_request(route, found.path_values, query, raw_body)
        if route.rpc.server_streaming and "last-event-id" in headers:
            resume_from(message, headers["last-event-id"])
        ceiling = (
            state.settings.stream_timeout_seconds
            if route.rpc.server_streaming
            else state.settings.call_timeout_seconds
        )
        timeout = parse_timeout(headers, ceiling)
    except errors.DomainError as exc:
        status, body = domain_error_response(exc)
        allow = {"Allow": ", ".join(exc.allowed)} if isinstance(exc, MethodNotAllowed) else None
        return error_response(status, body, allow)
    except ClientGone:
        return Response(status_code=499)
    metadata = call_metadata(headers)
    if route.rpc.server_streaming:
        return await stream_events(state, route, message, timeout, metadata)
    call = state.upstreams.callable_for(route.rpc)
    try:
        response = await call(message, timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        status, body = rpc_error_response(exc)
        return error_response(status, body, rpc_error_headers(exc))
    return Response(dumps(response_to_json(route, response)), media_type=JSON)


def resume_from(message: Message, last_event_id: str) -> None:
    """Set the request's resume field from a Last-Event-ID header (when it has one)."""
    if SSE_RESUME_FIELD not in message.DESCRIPTOR.fields_by_name:
        return
    text = last_event_id.strip()
    if not text.isdigit() or len(text) > 18:
        raise errors.InvalidArgument(
            "Last-Event-ID", f"expected the id: of an event of this stream, got {text[:32]!r}"
        )
    setattr(message, SSE_RESUME_FIELD, int(text))


def sse_event(data: Any, event: str = "", event_id: str = "") -> bytes:
    head = f"event: {event}\n" if event else ""
    if event_id:
        head += f"id: {event_id}\n"
    return f"{head}data: ".encode() + dumps(data) + b"\n\n"


def _sse_id(message: Message) -> str:
    if SSE_ID_FIELD in message.DESCRIPTOR.fields_by_name:
        return str(getattr(message, SSE_ID_FIELD))
    return ""


async def stream_events(
    state: GatewayState,
    route: HttpRoute,
    message: Message,
    deadline_seconds: float,
    metadata: Sequence[tuple[str, str]],
) -> Response:
    """A server-streaming RPC as server-sent events: one `data:` event per message, an
    `end` event when the stream finishes, an `error` event if it fails midway. An error
    before the first message is a plain HTTP error. A client disconnect cancels the call."""
    call = state.upstreams.callable_for(route.rpc)(
        message, timeout=deadline_seconds, metadata=metadata
    )
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        status, body = rpc_error_response(exc)
        return error_response(status, body, rpc_error_headers(exc))
    except BaseException:
        call.cancel()
        raise
    keepalive = state.settings.sse_keepalive_seconds

    draining = state.draining or asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        state.active_streams += 1
        reader: asyncio.Future[Any] | None = None
        stopping = asyncio.ensure_future(draining.wait())
        try:
            item = first
            while item is not grpc.aio.EOF:
                yield sse_event(response_to_json(route, item), event_id=_sse_id(item))
                reader = asyncio.ensure_future(call.read())
                while True:
                    done, _ = await asyncio.wait(
                        {reader, stopping}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stopping in done:
                        # Not "end": the watched thing is not finished; a client reconnects.
                        return
                    if done:
                        break
                    yield b": keep-alive\n\n"
                item = reader.result()
                reader = None
            yield sse_event({}, "end")
        except grpc.aio.AioRpcError as exc:
            _, body = rpc_error_response(exc)
            yield sse_event(body, "error")
        finally:
            stopping.cancel()
            if reader is not None and not reader.done():
                reader.cancel()
            call.cancel()
            state.active_streams -= 1

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- fixed endpoints ----------------------------------------------------------------------


async def health(request: Request) -> Response:
    """The gateway itself: up and accepting requests (503 before start and while stopping)."""
    state: GatewayState = request.app.state.gateway
    body = {
        "status": "healthy" if state.ready else "unavailable",
        "service": "gateway",
        "version": shared.__version__,
        "uptimeSeconds": round(time.monotonic() - state.started_at, 3),
        "routes": len(state.routes),
        "activeStreams": state.active_streams,
    }
    return json_response(body, 200 if state.ready else 503)


async def health_detailed(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    services = sorted({route.rpc.target for route in state.routes})
    healthy, body = await detailed_health(
        {name: state.upstreams.channel(name) for name in services},
        state.upstreams.targets,
        state.settings.health_timeout_seconds,
        current_request_id(),
    )
    healthy = healthy and state.ready
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "gateway": {
            "status": "healthy" if state.ready else "unavailable",
            "version": shared.__version__,
            "uptimeSeconds": round(time.monotonic() - state.started_at, 3),
        },
        **{key: value for key, value in body.items() if key != "status"},
    }
    return json_response(body, 200 if healthy else 503)


async def openapi(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return Response(state.openapi, media_type=JSON)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition of the gateway process (its HTTP port, no second listener)."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def docs(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return HTMLResponse(state.docs)


# --- assembly -------------------------------------------------------------------------------


def service_targets(
    settings: GatewaySettings, services: Sequence[ServiceDescriptor]
) -> dict[str, str]:
    """Each service's gRPC target from the `<key>_addr` setting (tasks_addr, ...)."""
    targets: dict[str, str] = {}
    for service in services:
        key = catalog.target_key(service)
        address = getattr(settings, f"{key}_addr", None)
        if isinstance(address, str) and address:
            targets[key] = address
    return targets


def create_app(
    settings: GatewaySettings,
    *,
    services: Sequence[ServiceDescriptor] | None = None,
    targets: Mapping[str, str] | None = None,
    comments: Mapping[str, str] | None = None,
) -> GatewayApp:
    """The gateway app. By default it serves every annotated service of the generated
    modules; tests pass their own `services` and `targets`."""
    services = list(services) if services is not None else catalog.discover_services()
    targets = dict(targets) if targets is not None else service_targets(settings, services)
    routes = RouteTable(catalog.build_routes(services, targets))
    comments = dict(comments) if comments is not None else load_comments()
    document = build_document(list(routes), comments, version=shared.__version__)
    used = {route.rpc.target: targets[route.rpc.target] for route in routes}
    state = GatewayState(
        settings=settings,
        routes=routes,
        upstreams=Upstreams(used, public_channel_credentials(settings, "gateway")),
        openapi=dumps(document),
        docs=render_docs(document),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.upstreams.open()
        state.draining = asyncio.Event()
        # Everything built so far (descriptors, routes, the OpenAPI document) lives as
        # long as the process: keep it out of the collector's full passes, which
        # otherwise walk it and show up as tail latency.
        gc.collect()
        gc.freeze()
        state.started_at = time.monotonic()
        state.ready = True
        log.info(
            "gateway.started",
            routes=len(routes),
            targets=state.upstreams.targets,
            listen=f"{settings.host}:{settings.port}",
        )
        try:
            yield
        finally:
            state.ready = False
            await state.upstreams.close(grace=1.0)
            log.info("gateway.stopped")

    fixed = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/health/detailed", health_detailed, methods=["GET"]),
            Route("/openapi", openapi, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/dashboard", dashboard.page, methods=["GET"]),
            Route("/dashboard.js", dashboard.script, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    fixed.state.gateway = state
    gateway = GatewayApp(state, fixed)
    if settings.cors_allow_origins:
        gateway.wrap_cors(list(settings.cors_allow_origins))
    return gateway


__all__ = ["GatewayApp", "GatewayState", "create_app", "message_to_json"]
