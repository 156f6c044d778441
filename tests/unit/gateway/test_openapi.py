"""The OpenAPI 3.1 document generated from the descriptors: valid, complete, and
documented from the proto comments."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from services.gateway.catalog import build_routes, discover_services
from services.gateway.comments import DESCRIPTOR_SET, PROTO_ROOT, _compile, load_comments
from services.gateway.docs import render_docs
from services.gateway.openapi import build_document
from tests.unit.gateway.things import compiled, thing_service

TARGETS = {"tasks": "t:1", "queue": "q:1", "verification": "v:1", "gatewaytest": "g:1"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    routes = build_routes(discover_services(), TARGETS)
    return build_document(routes, load_comments(), version="test")


def test_document_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_reference_route_is_documented(document: dict[str, Any]) -> None:
    paths = document["paths"]
    expected = {
        ("/health", "get"),
        ("/health/detailed", "get"),
        ("/openapi", "get"),
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/{id}", "get"),
        ("/api/v1/tasks/{id}", "delete"),
        ("/api/v1/tasks/stats/summary", "get"),
        ("/api/v1/tasks/{id}:watch", "get"),
        ("/api/v1/tasks/{task_id}/report", "get"),
        ("/api/v1/queue/status", "get"),
        ("/api/v1/queue/pause", "post"),
        ("/api/v1/queue/resume", "post"),
    }
    present = {(path, method) for path, item in paths.items() for method in item}
    assert expected <= present


def test_internal_rpcs_without_http_rules_are_absent(document: dict[str, Any]) -> None:
    operation_ids = {
        op["operationId"] for item in document["paths"].values() for op in item.values()
    }
    assert "TaskService_GetTask" in operation_ids
    assert not {
        "TaskWorkerService_StartTasks",
        "TaskWorkerService_CompleteTasks",
        "QueueService_EnqueueTask",
        "VerificationService_Verify",
        "VerificationEngineService_Verify",
        "VerificationEngineService_VerifyTasks",
    } & (operation_ids)


def test_descriptions_come_from_proto_comments(document: dict[str, Any]) -> None:
    get_task = document["paths"]["/api/v1/tasks/{id}"]["get"]
    assert get_task["summary"] == "GetTask returns one task."
    task = document["components"]["schemas"]["verifier.tasks.v1.Task"]
    assert task["description"] == "Task is one verification of one app."
    assert "lifecycle" in task["properties"]["status"]["description"]
    tags = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    assert "PostgreSQL" in tags["TaskService"]


def test_schemas_use_json_names_rest_enum_values_and_field_behavior(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    flags = schemas["verifier.verification.v1.VerificationFlags"]["properties"]
    assert {"hardware", "sourceCode", "teeControlledKey", "dnsCAA", "ctLog"} <= set(flags)
    assert schemas["verifier.verification.v1.AppConfigType"]["enum"] == [
        "unspecified",
        "redpill",
        "phala_cloud",
    ]
    assert "completed" in schemas["verifier.tasks.v1.TaskStatus"]["enum"]
    task = schemas["verifier.tasks.v1.Task"]
    assert task["properties"]["id"]["readOnly"] is True
    assert task["additionalProperties"] is False
    create = schemas["verifier.tasks.v1.CreateTaskRequest"]
    assert create["required"] == ["appConfigType"]
    stats = schemas["verifier.tasks.v1.GetTaskStatsResponse"]["properties"]
    assert stats["total"]["type"] == "integer"


def test_list_filters_are_query_parameters_with_types(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in document["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert set(parameters) == {
        "pageSize",
        "pageToken",
        "status",
        "appId",
        "appConfigType",
        "createdAfter",
        "createdBefore",
    }
    assert all(p["in"] == "query" for p in parameters.values())
    assert parameters["createdAfter"]["schema"]["format"] == "date-time"
    assert parameters["status"]["schema"]["$ref"].endswith("TaskStatus")


def test_path_parameters_and_streaming_response(document: dict[str, Any]) -> None:
    watch = document["paths"]["/api/v1/tasks/{id}:watch"]["get"]
    assert watch["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The task's id.",
    }
    # The resume point is a query parameter too (SSE clients send Last-Event-ID).
    assert [p["name"] for p in watch["parameters"][1:]] == ["afterEventId"]
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert watch["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }


def test_response_body_field_is_the_documented_response(document: dict[str, Any]) -> None:
    get_task = document["paths"]["/api/v1/tasks/{id}"]["get"]
    schema = get_task["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"] == "#/components/schemas/verifier.tasks.v1.Task"


def test_new_service_documents_body_field_nested_path_and_maps() -> None:
    _, comments = compiled()
    routes = build_routes([thing_service()], TARGETS)
    document = build_document(routes, comments, version="test")
    validate(document)
    create = document["paths"]["/v1/shelves/{shelf.id}/things"]["post"]
    assert create["parameters"][0]["name"] == "shelf.id"
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/gatewaytest.v1.Thing"}
    replace = document["paths"]["/v1/shelves/{shelf.id}/things:replace"]["put"]
    # The body is the whole request (the path's shelf.id wins over the body's).
    replace_body = replace["requestBody"]["content"]["application/json"]["schema"]
    assert replace_body == {"$ref": "#/components/schemas/gatewaytest.v1.CreateThingRequest"}
    assert replace["operationId"] == "ThingService_CreateThing_3"
    thing = document["components"]["schemas"]["gatewaytest.v1.Thing"]
    assert thing["properties"]["sizes"]["additionalProperties"]["format"] == "int64"
    get = document["paths"]["/v1/things/{name}"]["get"]
    names = [p["name"] for p in get["parameters"]]
    assert "inner.level" in names and "tags" in names


def test_comments_compile_from_protos_when_no_descriptor_set_exists() -> None:
    from google.protobuf import descriptor_pb2

    from services.gateway.comments import comments_from_descriptor_set

    compiled_now = comments_from_descriptor_set(
        descriptor_pb2.FileDescriptorSet.FromString(_compile(PROTO_ROOT))
    )
    assert compiled_now["verifier.tasks.v1.TaskService.GetTask"] == "GetTask returns one task."
    missing = load_comments(DESCRIPTOR_SET.with_name("missing.binpb"))
    assert missing == compiled_now


def test_docs_page_lists_every_operation(document: dict[str, Any]) -> None:
    page = render_docs(document)
    assert page.startswith("<!doctype html>")
    assert "/api/v1/tasks/{id}:watch" in page
    assert "GetTask returns one task." in page
    assert "<script" not in page
