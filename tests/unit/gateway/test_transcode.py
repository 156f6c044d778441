"""Transcoding by descriptor: path, query and body into the request; the response
into REST JSON (json names, REST enum values, 64-bit integers as numbers)."""

from __future__ import annotations

from typing import Any

import pytest
from verifier.queue.v1 import queue_pb2
from verifier.tasks.v1 import tasks_pb2
from verifier.verification.v1 import verification_pb2

from services.gateway.catalog import HttpRoute, build_routes, discover_services
from services.gateway.enums import enum_names, enum_prefix
from services.gateway.errors import BadRequest, MalformedJson, UnknownField
from services.gateway.rest_json import message_to_json, response_to_json
from services.gateway.transcode import build_request
from tests.unit.gateway.things import compiled, thing_service

TARGETS = {"tasks": "t:1", "queue": "q:1", "verification": "v:1", "gatewaytest": "g:1"}


def _routes() -> dict[str, HttpRoute]:
    routes = build_routes([*discover_services(), thing_service()], TARGETS)
    return {f"{r.http_method} {r.template.template}": r for r in routes}


ROUTES = _routes()


def route(key: str) -> HttpRoute:
    return ROUTES[key]


# --- enum values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enum", "value", "rest"),
    [
        (verification_pb2.AppConfigType, "APP_CONFIG_TYPE_PHALA_CLOUD", "phala_cloud"),
        (verification_pb2.AppConfigType, "APP_CONFIG_TYPE_REDPILL", "redpill"),
        (tasks_pb2.TaskStatus, "TASK_STATUS_COMPLETED", "completed"),
        (verification_pb2.Check, "CHECK_HARDWARE", "hardware"),
        (verification_pb2.Check, "CHECK_SOURCE_CODE", "source_code"),
        (queue_pb2.WorkerState, "WORKER_STATE_ONLINE", "online"),
    ],
)
def test_rest_enum_value_is_the_lowercase_name_without_the_type_prefix(
    enum: Any, value: str, rest: str
) -> None:
    assert enum_names(enum.DESCRIPTOR).alias_by_name[value] == rest


def test_enum_prefix_follows_the_type_name() -> None:
    assert enum_prefix(verification_pb2.AppConfigType.DESCRIPTOR) == "APP_CONFIG_TYPE_"


@pytest.mark.parametrize("given", ["phala_cloud", "APP_CONFIG_TYPE_PHALA_CLOUD", 2, "PHALA_CLOUD"])
def test_enum_input_accepts_rest_value_full_name_and_number(given: Any) -> None:
    request = build_request(
        route("POST /api/v1/tasks"), {}, [], _json({"appConfigType": given, "appId": "a"})
    )
    assert request.app_config_type == verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD


def test_unknown_enum_value_names_the_field_and_the_choices() -> None:
    with pytest.raises(BadRequest) as caught:
        build_request(route("POST /api/v1/tasks"), {}, [], _json({"appConfigType": "cloudy"}))
    assert caught.value.field == "appConfigType"
    assert "redpill" in caught.value.message and "phala_cloud" in caught.value.message


# --- body ---------------------------------------------------------------------------


def _json(data: Any) -> bytes:
    import json

    return json.dumps(data).encode()


def test_create_body_takes_reference_field_names_and_json_name() -> None:
    request = build_request(
        route("POST /api/v1/tasks"),
        {},
        [],
        _json(
            {
                "appId": "app-1",
                "appName": "demo",
                "appConfigType": "redpill",
                "modelOrDomain": "example.com",
                "appMetadata": {"team": "x", "n": [1, 2]},
                "verificationFlags": {"hardware": True, "dnsCAA": True, "ctLog": False},
                "evaluationTime": "2026-03-05T10:50:03Z",
            }
        ),
    )
    assert isinstance(request, tasks_pb2.CreateTaskRequest)
    assert request.app_id == "app-1" and request.model_or_domain == "example.com"
    assert request.verification_flags.dns_caa is True
    assert request.verification_flags.HasField("ct_log") and not request.verification_flags.ct_log
    assert not request.verification_flags.HasField("os")
    assert request.evaluation_time.ToJsonString() == "2026-03-05T10:50:03Z"
    assert request.app_metadata["team"] == "x"


def test_proto_field_names_are_accepted_too() -> None:
    request = build_request(
        route("POST /api/v1/tasks"), {}, [], _json({"app_id": "a", "app_config_type": "redpill"})
    )
    assert request.app_id == "a"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"appId": "a", "colour": "red"}, "colour"),
        ({"verificationFlags": {"dnsCaa": True}}, "verificationFlags.dnsCaa"),
        ({"evidence": {"quote": "00", "extra": 1}}, "evidence.extra"),
    ],
)
def test_unknown_body_field_is_rejected_by_its_path(body: dict[str, Any], field: str) -> None:
    with pytest.raises(UnknownField) as caught:
        build_request(route("POST /api/v1/tasks"), {}, [], _json(body))
    assert caught.value.field == field


@pytest.mark.parametrize("raw", [b"{bad", b"\xff\xfe", b'{"a": ', b"[" * 100_000])
def test_malformed_json_is_a_bad_request(raw: bytes) -> None:
    with pytest.raises(MalformedJson):
        build_request(route("POST /api/v1/tasks"), {}, [], raw)


def test_body_that_is_not_an_object_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        build_request(route("POST /api/v1/tasks"), {}, [], b"[1, 2]")


def test_wrong_value_type_names_the_field() -> None:
    with pytest.raises(BadRequest) as caught:
        build_request(route("POST /api/v1/tasks"), {}, [], _json({"evaluationTime": "yesterday"}))
    assert caught.value.field == "evaluationTime"
    assert " at " not in caught.value.message


def test_empty_body_is_an_empty_request() -> None:
    request = build_request(route("POST /api/v1/queue/pause"), {}, [], b"")
    assert request == queue_pb2.PauseQueueRequest()


def test_query_parameters_are_refused_when_the_body_is_the_whole_request() -> None:
    with pytest.raises(UnknownField) as caught:
        build_request(route("POST /api/v1/queue/pause"), {}, [("force", "1")], b"")
    assert caught.value.field == "force"


def test_body_field_mapping_puts_the_body_in_that_field_and_path_in_nested_field() -> None:
    pb, _ = compiled()
    request = build_request(
        route("POST /v1/shelves/{shelf.id}/things"),
        {("shelf", "id"): "s1"},
        [],
        _json({"name": "t", "kind": "small", "sizes": {"a": "5"}, "dnsCAA": True}),
    )
    assert request.shelf.id == "s1"
    assert request.thing.name == "t" and request.thing.kind == pb.THING_KIND_SMALL
    assert request.thing.sizes["a"] == 5 and request.thing.dns_caa


def test_path_value_wins_over_the_same_field_in_the_body() -> None:
    request = build_request(
        route("PUT /v1/shelves/{shelf.id}/things:replace"),
        {("shelf", "id"): "from-path"},
        [],
        _json({"shelf": {"id": "from-body"}, "thing": {"name": "x"}}),
    )
    assert request.shelf.id == "from-path"
    assert request.thing.name == "x"


# --- query ----------------------------------------------------------------------------


def test_list_filters_and_paging_come_from_the_query() -> None:
    request = build_request(
        route("GET /api/v1/tasks"),
        {},
        [
            ("status", "completed"),
            ("appId", "app-1"),
            ("app_config_type", "phala_cloud"),
            ("pageSize", "20"),
            ("pageToken", "abc"),
            ("createdAfter", "2026-01-01T00:00:00Z"),
            ("createdBefore", "2026-02-01T00:00:00+01:00"),
        ],
        b"",
    )
    assert isinstance(request, tasks_pb2.ListTasksRequest)
    assert request.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert request.app_config_type == verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD
    assert (request.page_size, request.page_token, request.app_id) == (20, "abc", "app-1")
    assert request.created_after.ToJsonString() == "2026-01-01T00:00:00Z"
    assert request.created_before.ToJsonString() == "2026-01-31T23:00:00Z"


def test_repeated_nested_and_64_bit_query_parameters() -> None:
    pb, _ = compiled()
    request = build_request(
        route("GET /v1/things/{name}"),
        {("name",): "a/b"},
        [
            ("tags", "x"),
            ("tags", "y"),
            ("kinds", "small"),
            ("kinds", "1"),
            ("inner.level", "3"),
            ("inner.kind", "big_one"),
            ("big", "9007199254740993"),
            ("flag", "true"),
        ],
        b"",
    )
    assert request.name == "a/b"
    assert list(request.tags) == ["x", "y"]
    assert list(request.kinds) == [pb.THING_KIND_SMALL, pb.THING_KIND_BIG_ONE]
    assert request.inner.level == 3 and request.inner.kind == pb.THING_KIND_BIG_ONE
    assert request.big == 9007199254740993 and request.flag


def test_empty_query_value_of_a_non_string_field_means_not_given() -> None:
    request = build_request(route("GET /api/v1/tasks"), {}, [("status", ""), ("pageSize", "")], b"")
    assert request == tasks_pb2.ListTasksRequest()


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        ([("pageSize", "many")], "pageSize"),
        ([("pageSize", "99999999999")], "pageSize"),
        ([("status", "done-ish")], "status"),
        ([("createdAfter", "yesterday")], "createdAfter"),
        ([("colour", "red")], "colour"),
        ([("pageSize", "1"), ("page_size", "2")], "page_size"),
        ([("id", "x")], "id"),
    ],
)
def test_bad_query_parameter_is_named(pairs: list[tuple[str, str]], field: str) -> None:
    target = route("GET /api/v1/tasks") if field != "id" else route("GET /api/v1/tasks/{id}")
    with pytest.raises(BadRequest) as caught:
        build_request(target, {("id",): "t"} if field == "id" else {}, pairs, b"")
    assert caught.value.field == field


# --- output ---------------------------------------------------------------------------


def test_task_json_uses_reference_names_and_rest_enum_values() -> None:
    task = tasks_pb2.Task(
        id="t1",
        app_id="a",
        app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
        model_or_domain="example.com",
        status=tasks_pb2.TASK_STATUS_COMPLETED,
        verification_flags=verification_pb2.VerificationFlags(hardware=True, dns_caa=False),
        check_results=[
            verification_pb2.CheckResult(
                check=verification_pb2.CHECK_HARDWARE, status=verification_pb2.CHECK_STATUS_PASSED
            )
        ],
        verdict=verification_pb2.VERDICT_PASSED,
    )
    body = response_to_json(route("GET /api/v1/tasks/{id}"), tasks_pb2.GetTaskResponse(task=task))
    assert body["id"] == "t1"
    assert body["appConfigType"] == "phala_cloud"
    assert body["status"] == "completed"
    assert body["modelOrDomain"] == "example.com"
    assert body["verificationFlags"] == {"hardware": True, "dnsCAA": False}
    assert body["checkResults"] == [
        {"check": "hardware", "status": "passed", "reason": "", "part": ""}
    ]
    assert body["verdict"] == "passed"
    # Fields without presence are printed, so clients see a stable shape.
    assert body["progress"] == 0 and body["errorMessage"] == ""


def test_int64_counts_are_json_numbers() -> None:
    body = response_to_json(
        route("GET /api/v1/tasks/stats/summary"),
        tasks_pb2.GetTaskStatsResponse(total=7, completed=5, p95_processing_seconds=1.5),
    )
    assert body["total"] == 7 and body["completed"] == 5 and body["cancelled"] == 0
    assert body["p95ProcessingSeconds"] == 1.5


def test_response_body_selects_a_field_and_whole_message_otherwise() -> None:
    status = queue_pb2.QueueStatus(queue_name="verification-queue", paused=True, waiting=3)
    body = response_to_json(
        route("GET /api/v1/queue/status"), queue_pb2.GetQueueStatusResponse(status=status)
    )
    assert body["queueName"] == "verification-queue" and body["paused"] is True
    assert body["waiting"] == 3
    listed = response_to_json(
        route("GET /api/v1/tasks"),
        tasks_pb2.ListTasksResponse(tasks=[tasks_pb2.Task(id="a")], next_page_token="n"),
    )
    assert listed["nextPageToken"] == "n" and listed["tasks"][0]["id"] == "a"


def test_map_values_and_repeated_enums_are_rendered_the_rest_way() -> None:
    pb, _ = compiled()
    thing = pb.Thing(name="x", sizes={"a": 2**40}, kinds=[pb.THING_KIND_SMALL])
    body = message_to_json(thing)
    assert body["sizes"] == {"a": 2**40}
    assert body["kinds"] == ["small"]
    assert body["dnsCAA"] is False
