"""gRPC status -> HTTP status and the error body `{code, status, message, details}`.

The HTTP statuses follow google.rpc.Code's documented mapping. `code` in the
body is the gRPC code number (the google.rpc.Status convention, as grpc-gateway
and Google's APIs use it); `status` is its name; `details` are the status
details the service attached (google.rpc.BadRequest field violations, ...) in
proto3 JSON with their "@type".
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from shared import errors
from shared.context import REQUEST_ID_METADATA_KEY
from shared.grpc_server import status_code_for

# Importing error_details_pb2 registers BadRequest, ErrorInfo, ... so details decode.
_DETAIL_TYPES = error_details_pb2

HTTP_STATUS_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_CODE.get(code, 500)


def error_body(
    code: grpc.StatusCode, message: str, details: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "code": code.value[0],
        "status": code.name,
        "message": message,
        "details": details or [],
    }


def decode_details(trailing_metadata: Any) -> list[Any]:
    """The details of a google.rpc.Status in the trailers, as JSON (unknown types skipped)."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer must not turn an error into a crash
            return []
        decoded = []
        for detail in status.details:
            try:
                decoded.append(json_format.MessageToDict(detail))
            except (json_format.Error, TypeError, KeyError):
                decoded.append({"@type": detail.type_url})
        return decoded
    return []


def rpc_error_response(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a failed call."""
    code = error.code()
    message = error.details() or code.name
    trailers = error.trailing_metadata() or ()
    from_server = any(key == REQUEST_ID_METADATA_KEY for key, _ in trailers)
    if code == grpc.StatusCode.UNAVAILABLE and not from_server:
        # The channel's own text names sockets and resolver internals; say what happened.
        message = "the service is unavailable; retry later"
    details = decode_details(trailers)
    return http_status(code), error_body(code, message, details)


def domain_error_response(exc: errors.DomainError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for an error the gateway raised itself."""
    code = status_code_for(exc)
    details: list[Any] = []
    field = getattr(exc, "field", "")
    if isinstance(exc, errors.InvalidArgument) and field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": exc.message}],
            }
        )
    status = getattr(exc, "http_status", None) or http_status(code)
    return status, error_body(code, exc.message, details)
