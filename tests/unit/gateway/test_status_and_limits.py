"""gRPC status -> HTTP status (google.rpc.Code), error bodies, timeout headers."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.gateway.errors import BadTimeout, MethodNotAllowed, PayloadTooLarge, UnknownField
from services.gateway.status import decode_details, domain_error_response, http_status
from services.gateway.upstream import parse_timeout


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_grpc_codes_map_by_the_google_rpc_table(code: grpc.StatusCode, status: int) -> None:
    assert http_status(code) == status


def test_status_details_decode_to_json_with_type() -> None:
    violation = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="app_id", description="too long")
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(violation)
    status = status_pb2.Status(code=3, message="app_id: too long", details=[detail])
    decoded = decode_details([("grpc-status-details-bin", status.SerializeToString())])
    assert decoded == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "app_id", "description": "too long"}],
        }
    ]


def test_malformed_status_details_are_ignored() -> None:
    assert decode_details([("grpc-status-details-bin", b"\xff\xff\xff")]) == []
    assert decode_details(None) == []


def test_gateway_errors_have_their_http_status_and_a_field_violation() -> None:
    status, body = domain_error_response(UnknownField("colour", where="query"))
    assert status == 400
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert body["status"] == "INVALID_ARGUMENT"
    assert body["details"][0]["fieldViolations"][0]["field"] == "colour"
    assert domain_error_response(PayloadTooLarge(10))[0] == 413
    assert domain_error_response(MethodNotAllowed("PUT", ["GET"]))[0] == 405


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 30.0),
        ({"x-timeout": "2.5"}, 2.5),
        ({"x-timeout": "2.5s"}, 2.5),
        ({"x-timeout": "500ms"}, 0.5),
        ({"x-timeout": "120"}, 30.0),
        ({"grpc-timeout": "100m"}, 0.1),
        ({"grpc-timeout": "2S"}, 2.0),
        ({"grpc-timeout": "1H"}, 30.0),
        ({"x-timeout": "5", "grpc-timeout": "1S"}, 1.0),
    ],
)
def test_client_may_lower_the_deadline_never_raise_it(
    headers: dict[str, str], expected: float
) -> None:
    assert parse_timeout(headers, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    "headers", [{"x-timeout": "soon"}, {"x-timeout": "0"}, {"grpc-timeout": "5x"}]
)
def test_malformed_timeout_header_is_a_bad_request(headers: dict[str, str]) -> None:
    with pytest.raises(BadTimeout):
        parse_timeout(headers, 30.0)
