"""The gateway over real sockets against a service it has no code for (the test-only
ThingService on a real gRPC server): generic transcoding, errors, request ids,
limits, deadlines, server-sent events and cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.integration.gateway.support import (
    ThingServicer,
    gateway_settings,
    running_gateway,
    running_things,
)
from tests.support.servers import free_port
from tests.unit.gateway.things import compiled, thing_service

MAX_BODY = 2048


@pytest.fixture(scope="module")
async def things() -> AsyncIterator[tuple[ThingServicer, int]]:
    async with running_things() as (servicer, running):
        yield servicer, running.port


@pytest.fixture(scope="module")
async def client(things: tuple[ThingServicer, int]) -> AsyncIterator[httpx.AsyncClient]:
    _, port = things
    _, comments = compiled()
    settings = gateway_settings(
        max_body_bytes=MAX_BODY, call_timeout_seconds=5.0, sse_keepalive_seconds=0.2
    )
    async with (
        running_gateway(
            settings,
            services=[thing_service()],
            targets={"gatewaytest": f"127.0.0.1:{port}"},
            comments=comments,
        ) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        yield http


async def test_new_annotated_rpc_is_served_without_a_gateway_change(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/things/a%2Fb",
        params=[
            ("kind", "big_one"),
            ("tags", "x"),
            ("tags", "y"),
            ("inner.level", "3"),
            ("big", "9007199254740993"),
            ("at", "2026-03-05T10:50:03Z"),
            ("flag", "true"),
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "a/b"
    assert body["kind"] == "big_one"
    assert body["tags"] == ["x", "y"]
    assert body["inner"] == {"kind": "unspecified", "level": 3}
    assert body["count"] == 9007199254740993
    assert body["at"] == "2026-03-05T10:50:03Z"
    assert body["dnsCAA"] is True
    assert response.headers["content-type"] == "application/json"


async def test_rpc_without_http_rule_is_not_reachable(client: httpx.AsyncClient) -> None:
    response = await client.post("/gatewaytest.v1.ThingService/Internal", json={})
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"


async def test_body_field_mapping_with_nested_path_variable_and_response_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/shelves/s-1/things", json={"name": "t", "kind": "small", "sizes": {"a": 5}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shelfId"] == "s-1" and body["name"] == "t" and body["kind"] == "small"
    assert body["sizes"] == {"a": 5}
    whole = await client.post(
        "/v1/things:create", json={"shelf": {"id": "s-2"}, "thing": {"name": "u"}}
    )
    assert whole.json()["created"] is True and whole.json()["thing"]["shelfId"] == "s-2"


async def test_request_id_is_passed_to_the_service_and_returned(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/things/x", headers={"X-Request-Id": "req-abc.123"})
    assert response.headers["x-request-id"] == "req-abc.123"
    assert response.json()["requestId"] == "req-abc.123"


async def test_request_id_is_made_when_missing_or_unsafe(client: httpx.AsyncClient) -> None:
    made = await client.get("/v1/things/x")
    assert len(made.headers["x-request-id"]) == 32
    assert made.json()["requestId"] == made.headers["x-request-id"]
    unsafe = await client.get("/v1/things/x", headers={"X-Request-Id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    error = await client.get("/nowhere", headers={"X-Request-Id": "on-errors-too"})
    assert error.headers["x-request-id"] == "on-errors-too"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("NOT_FOUND", 404, "NOT_FOUND"),
        ("ALREADY_EXISTS", 409, "ALREADY_EXISTS"),
        ("FAILED_PRECONDITION", 400, "FAILED_PRECONDITION"),
        ("RESOURCE_EXHAUSTED", 429, "RESOURCE_EXHAUSTED"),
        ("UNAVAILABLE", 503, "UNAVAILABLE"),
        ("DEADLINE_EXCEEDED", 504, "DEADLINE_EXCEEDED"),
        ("PERMISSION_DENIED", 403, "PERMISSION_DENIED"),
        ("UNIMPLEMENTED", 501, "UNIMPLEMENTED"),
    ],
)
async def test_service_status_maps_to_http_status(
    client: httpx.AsyncClient, name: str, status: int, code: str
) -> None:
    response = await client.delete(f"/v1/failures/{name}")
    assert response.status_code == status
    body = response.json()
    assert body["status"] == code
    assert set(body) == {"code", "status", "message", "details"}
    assert body["message"]


async def test_service_unavailable_message_is_kept_when_the_service_said_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.delete("/v1/failures/UNAVAILABLE")
    assert response.json()["message"] == "the shelf is away"


async def test_invalid_argument_carries_field_violations(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/failures/INVALID_ARGUMENT")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "name", "description": "name: is not acceptable"}],
        }
    ]


async def test_internal_error_is_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/failures/CRASH")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.headers["x-request-id"] in response.json()["message"]


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["message"].startswith("no route for GET /v1/nothing/here")
    wrong = await client.put("/v1/things/x")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"


# A body must say it is JSON (a form or text/plain post is 415: tests/integration/auth).
JSON_BODY = {"content-type": "application/json"}


async def test_malformed_json_is_a_clear_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things:create", content=b'{"thing": {', headers=JSON_BODY)
    assert response.status_code == 400
    assert response.json()["message"].startswith("malformed JSON body")


async def test_unknown_body_field_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things:create", json={"thing": {"name": "x", "colour": 1}})
    assert response.status_code == 400
    body = response.json()
    assert body["details"][0]["fieldViolations"][0]["field"] == "thing.colour"
    assert "unknown field" in body["message"]


async def test_unknown_query_parameter_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/things/x", params={"colour": "red"})
    assert response.status_code == 400
    assert response.json()["details"][0]["fieldViolations"][0]["field"] == "colour"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    big = json.dumps({"thing": {"name": "x" * (MAX_BODY + 1)}})
    response = await client.post("/v1/things:create", content=big, headers=JSON_BODY)
    assert response.status_code == 413
    assert response.json()["status"] == "RESOURCE_EXHAUSTED"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * MAX_BODY

    streamed = await client.post("/v1/things:create", content=chunks(), headers=JSON_BODY)
    assert streamed.status_code == 413


async def test_deadline_is_propagated_and_a_client_may_lower_it(
    client: httpx.AsyncClient,
) -> None:
    # The server sees the deadline the gateway set (grpc rounds it up a little).
    default = (await client.get("/v1/things/x")).json()["deadlineSeconds"]
    assert 4.0 < default < 5.1
    lowered = (await client.get("/v1/things/x", headers={"X-Timeout": "1.5"})).json()
    assert 0.5 < lowered["deadlineSeconds"] < 1.6
    grpc_style = (await client.get("/v1/things/x", headers={"grpc-timeout": "800m"})).json()
    assert 0 < grpc_style["deadlineSeconds"] < 0.9


async def test_call_past_its_deadline_is_504(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/failures/SLOW", headers={"X-Timeout": "100ms"})
    assert response.status_code == 504
    assert response.json()["status"] == "DEADLINE_EXCEEDED"


async def test_malformed_timeout_header_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/things/x", headers={"X-Timeout": "later"})
    assert response.status_code == 400
    assert response.json()["details"][0]["fieldViolations"][0]["field"] == "X-Timeout"


def _events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        name = "message"
        data = None
        for line in lines:
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data = json.loads(value)
        events.append((name, data))
    return events


async def test_server_stream_is_one_event_per_message_then_end(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/things/w:watch", params={"count": 3})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert [name for name, _ in events] == ["message", "message", "message", "end"]
    assert [data["name"] for _, data in events[:3]] == ["w-0", "w-1", "w-2"]
    assert events[1][1]["count"] == 1


async def test_client_disconnect_cancels_the_grpc_stream(
    client: httpx.AsyncClient, things: tuple[ThingServicer, int]
) -> None:
    servicer, _ = things
    cancelled_before = servicer.cancelled_streams
    async with client.stream("GET", "/v1/things/forever:watch") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["name"] == "forever"
                break
        health = (await client.get("/health")).json()
        assert health["activeStreams"] == 1
    # The client went away: the gateway must cancel the upstream call.
    for _ in range(200):
        if servicer.cancelled_streams > cancelled_before:
            break
        await asyncio.sleep(0.05)
    assert servicer.cancelled_streams == cancelled_before + 1
    for _ in range(100):
        if (await client.get("/health")).json()["activeStreams"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await client.get("/health")).json()["activeStreams"] == 0


async def test_idle_stream_gets_keepalive_comments(client: httpx.AsyncClient) -> None:
    comments = 0
    async with client.stream("GET", "/v1/things/idle:watch") as response:
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 2:
                    break
    assert comments == 2


async def test_health_reports_the_gateway_and_detailed_reports_services(
    client: httpx.AsyncClient,
) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "healthy" and health.json()["routes"] == 6
    detailed = await client.get("/health/detailed")
    assert detailed.status_code == 200, detailed.text
    service = detailed.json()["services"]["gatewaytest"]
    assert service["status"] == "SERVING" and service["healthy"] is True
    assert service["latencyMs"] > 0


async def test_openapi_is_served_valid_and_docs_page_renders(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi")).json()
    validate(document)
    assert "/v1/shelves/{shelf.id}/things" in document["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "ThingService" in docs.text


async def test_unreachable_service_is_503_and_detailed_health_says_so() -> None:
    closed = free_port()
    async with (
        running_gateway(
            gateway_settings(health_timeout_seconds=0.5),
            services=[thing_service()],
            targets={"gatewaytest": f"127.0.0.1:{closed}"},
            comments={},
        ) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        response = await http.get("/v1/things/x", headers={"X-Timeout": "1"})
        assert response.status_code == 503
        assert response.json()["message"] == "the service is unavailable; retry later"
        detailed = await http.get("/health/detailed")
        assert detailed.status_code == 503
        assert detailed.json()["services"]["gatewaytest"]["status"] == "UNREACHABLE"
        assert (await http.get("/health")).status_code == 200


async def test_cors_is_off_by_default_and_answers_allowed_origins_when_configured(
    client: httpx.AsyncClient, things: tuple[ThingServicer, int]
) -> None:
    plain = await client.get("/v1/things/x", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in plain.headers
    _, port = things
    async with (
        running_gateway(
            gateway_settings(cors_allow_origins=("https://app.example",)),
            services=[thing_service()],
            targets={"gatewaytest": f"127.0.0.1:{port}"},
            comments={},
        ) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        preflight = await http.options(
            "/v1/things/x",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-request-id",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = await http.get("/v1/things/x", headers={"Origin": "https://app.example"})
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
        other = await http.get("/v1/things/x", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
