"""The gateway's own errors, on the shared domain bases (mapped to gRPC codes,
then to HTTP statuses, in one place: services.gateway.status)."""

from __future__ import annotations

from shared import errors


class RouteConfigError(ValueError):
    """An annotation the gateway cannot serve (a contract bug, found at start)."""


class BadRequest(errors.InvalidArgument):
    """The HTTP request cannot be transcoded: malformed JSON, an unknown field or
    parameter, a value of the wrong type. `field` names it (JSON path)."""


class MalformedJson(BadRequest):
    """The body is not JSON."""

    def __init__(self, message: str) -> None:
        super().__init__("", f"malformed JSON body: {message}")


class UnknownField(BadRequest):
    """A body field or query parameter the request message does not have."""

    def __init__(self, field: str, where: str = "body") -> None:
        kind = "query parameter" if where == "query" else "field"
        super().__init__(field, f"unknown {kind}")


class BadTimeout(BadRequest):
    """An X-Timeout or grpc-timeout header that is not a duration."""

    def __init__(self, header: str, value: str) -> None:
        super().__init__(header, f"not a timeout: {value!r} (use seconds, e.g. 2.5, or 500ms)")


class PayloadTooLarge(errors.ResourceExhausted):
    """The request body exceeds max_body_bytes (HTTP 413)."""

    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")


class RouteNotFound(errors.NotFound):
    """No annotated RPC has this path."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no route for {method} {path}; see GET /openapi")


class MethodNotAllowed(errors.FailedPrecondition):
    """The path exists with other methods (HTTP 405)."""

    http_status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} not allowed; allowed: {', '.join(allowed)}")
        self.allowed = allowed


class UnsupportedMediaType(errors.InvalidArgument):
    """A body that is not JSON by its content-type (HTTP 415): a form or text/plain
    POST is what a foreign web page can send without a CORS preflight."""

    http_status = 415

    def __init__(self, content_type: str) -> None:
        shown = content_type or "none"
        super().__init__("content-type", f"the body must be application/json, got {shown[:100]!r}")
