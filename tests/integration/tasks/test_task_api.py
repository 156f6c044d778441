"""TaskService over real gRPC, on PostgreSQL and on the embedded SQLite file:
create/get/list, idempotency, validation, cancel rules, the worker lifecycle,
the audit trail, WatchTask and the queue hand-off."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from verifier.tasks.v1 import tasks_pb2
from verifier.verification.v1 import verification_pb2

from .conftest import (
    Harness,
    complete_task,
    create_request,
    report_progress,
    start_tasks,
    wait_for_status,
)

pytestmark = pytest.mark.integration

PENDING = tasks_pb2.TASK_STATUS_PENDING
QUEUED = tasks_pb2.TASK_STATUS_QUEUED
ACTIVE = tasks_pb2.TASK_STATUS_ACTIVE
COMPLETED = tasks_pb2.TASK_STATUS_COMPLETED
FAILED = tasks_pb2.TASK_STATUS_FAILED
CANCELLED = tasks_pb2.TASK_STATUS_CANCELLED


async def _create(h: Harness, app_id: str = "a1", **fields: object) -> tasks_pb2.Task:
    response = await h.stub.CreateTask(create_request(app_id, **fields))
    return response.task


async def _invalid_field(call: object) -> str:
    """The field an INVALID_ARGUMENT names (from its BadRequest detail)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    trailing = dict(caught.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# --- create and get --------------------------------------------------------------


async def test_create_stores_every_field_and_fills_default_flags(h: Harness) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"owner": "team-a", "tier": 2})
    evaluation = timestamp_pb2.Timestamp(seconds=1_760_000_000)
    created = await _create(
        h,
        "af1e1d5",
        contract_address="0x" + "Ab" * 20,
        app_metadata=metadata,
        expected_compose_hash="0x" + "C" * 64,
        evaluation_time=evaluation,
        verification_flags=verification_pb2.VerificationFlags(dns_caa=True, os=False),
    )
    assert created.status == PENDING
    assert created.job_name == "verify:phala_cloud"
    assert created.app_name == "demo" and created.model_or_domain == "demo.phala.network"
    assert created.contract_address == "0x" + "ab" * 20
    assert created.expected_compose_hash == "c" * 64
    assert created.evaluation_time == evaluation
    assert dict(created.app_metadata) == {"owner": "team-a", "tier": 2.0}
    flags = created.verification_flags
    assert (flags.hardware, flags.os, flags.source_code, flags.tee_controlled_key) == (
        True,
        False,
        True,
        True,
    )
    assert (flags.certificate_key, flags.dns_caa, flags.ct_log) == (True, True, False)
    assert flags.HasField("ct_log"), "defaults are stored filled in, not left unset"
    assert created.created_at.seconds > 0 and created.updated_at == created.created_at

    fetched = (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=created.id))).task
    assert fetched.id == created.id
    assert fetched.verification_flags == flags
    assert fetched.app_metadata == created.app_metadata


async def test_evidence_is_returned_only_in_the_full_view(h: Harness) -> None:
    evidence = verification_pb2.Evidence(quote="ab" * 100, event_log="[]", app_compose="{}")
    created = await _create(h, evidence=evidence)
    assert created.has_evidence and not created.HasField("evidence")
    basic = (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=created.id))).task
    assert basic.has_evidence and not basic.HasField("evidence")
    full = (
        await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=created.id, view=tasks_pb2.TASK_VIEW_FULL))
    ).task
    assert full.evidence == evidence


async def test_get_of_unknown_task_is_not_found(h: Harness) -> None:
    error = await _error(
        h.stub.GetTask(tasks_pb2.GetTaskRequest(id="00000000-0000-4000-8000-000000000000"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_create_with_same_request_id_returns_the_first_task(h: Harness) -> None:
    first = await _create(h, request_id="client-key-1")
    again = await _create(h, request_id="client-key-1", app_name="changed")
    assert again.id == first.id and again.app_name == "demo"
    assert again.request_id == "client-key-1"
    other = await _create(h, request_id="client-key-2")
    assert other.id != first.id


async def test_concurrent_creates_with_one_request_id_make_one_task(h: Harness) -> None:
    calls = [_create(h, request_id="race-key") for _ in range(8)]
    tasks = await asyncio.gather(*calls)
    assert len({task.id for task in tasks}) == 1
    events = await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=tasks[0].id))
    assert [e.type for e in events.events].count("created") == 1


async def test_created_task_is_handed_to_the_queue_and_marked_queued(h: Harness) -> None:
    created = await _create(h)
    queued = await wait_for_status(h.stub, created.id, QUEUED)
    assert queued.queue_job_id == h.queue.enqueued[created.id]
    events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=created.id))).events
    assert [(e.type, e.to_status) for e in events][:2] == [("created", PENDING), ("queued", QUEUED)]


# --- batch create ----------------------------------------------------------------


def _batch(*requests: tasks_pb2.CreateTaskRequest) -> tasks_pb2.BatchCreateTasksRequest:
    return tasks_pb2.BatchCreateTasksRequest(requests=list(requests))


async def test_batch_create_makes_one_pending_task_per_item_in_order(h: Harness) -> None:
    names = [f"ba7c{n}" for n in range(5)]
    response = await h.stub.BatchCreateTasks(_batch(*(create_request(n) for n in names)))
    assert [task.app_id for task in response.tasks] == names
    assert len({task.id for task in response.tasks}) == 5
    assert {task.status for task in response.tasks} <= {PENDING, QUEUED}
    for task in response.tasks:
        events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
        assert [e.type for e in events][:1] == ["created"]
        await wait_for_status(h.stub, task.id, QUEUED)


async def test_batch_create_keeps_each_items_evidence_with_its_task(h: Harness) -> None:
    # PostgreSQL takes the batch's evidence apart from its rows, in row order.
    evidences = [
        verification_pb2.Evidence(quote="ab" * (10 + n), event_log=f'[{{"n": {n}}}]')
        for n in range(3)
    ]
    response = await h.stub.BatchCreateTasks(
        _batch(
            create_request("e0", evidence=evidences[0]),
            create_request("e1"),
            create_request("e2", evidence=evidences[1]),
            create_request("e3", evidence=evidences[2]),
            create_request("e4"),
        )
    )
    expected = [evidences[0], None, evidences[1], evidences[2], None]
    for task, evidence in zip(response.tasks, expected, strict=True):
        assert task.has_evidence == (evidence is not None)
        full = await h.stub.GetTask(
            tasks_pb2.GetTaskRequest(id=task.id, view=tasks_pb2.TASK_VIEW_FULL)
        )
        assert full.task.has_evidence == (evidence is not None)
        assert full.task.evidence == (evidence or verification_pb2.Evidence())


async def test_batch_create_is_idempotent_per_request_id(h: Harness) -> None:
    first = await _create(h, request_id="batch-known")
    response = await h.stub.BatchCreateTasks(
        _batch(
            create_request("b01", request_id="batch-new"),
            create_request("b02", request_id="batch-known", app_name="changed"),
            create_request("b03"),
            create_request("b04", request_id="batch-new"),
        )
    )
    tasks = list(response.tasks)
    assert tasks[1].id == first.id and tasks[1].app_name == "demo"
    assert tasks[3].id == tasks[0].id, "the same request_id twice in a batch is one task"
    assert len({t.id for t in tasks}) == 3
    again = await h.stub.BatchCreateTasks(
        _batch(
            create_request("b01", request_id="batch-new"),
            create_request("b02", request_id="batch-known"),
        )
    )
    assert [t.id for t in again.tasks] == [tasks[0].id, first.id]
    for task in (tasks[0], first):
        events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
        assert [e.type for e in events].count("created") == 1


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_non_finite_metadata_over_grpc_is_invalid_argument_naming_it(
    h: Harness, number: float
) -> None:
    # The binary path: a Struct can carry NaN and Infinity, which JSON cannot.
    request = create_request("5a5a")
    request.app_metadata.update({"ok": 1, "deep": {"k": [0, number]}})
    assert await _invalid_field(h.stub.CreateTask(request)) == "app_metadata.deep.k[1]"
    batch = _batch(create_request("5a5a"), request)
    assert await _invalid_field(h.stub.BatchCreateTasks(batch)) == (
        "requests[1].app_metadata.deep.k[1]"
    )


async def test_batch_create_with_a_bad_item_names_it_and_creates_nothing(h: Harness) -> None:
    before = (await h.stub.ListTasks(tasks_pb2.ListTasksRequest(app_id="badba7c"))).tasks
    not_hex = verification_pb2.Evidence(quote="zz")
    request = _batch(
        *(create_request("badba7c") for _ in range(3)),
        create_request("badba7c", evidence=not_hex),
    )
    assert await _invalid_field(h.stub.BatchCreateTasks(request)) == "requests[3].evidence.quote"
    after = (await h.stub.ListTasks(tasks_pb2.ListTasksRequest(app_id="badba7c"))).tasks
    assert len(after) == len(before)
    assert await _invalid_field(h.stub.BatchCreateTasks(_batch())) == "requests"
    too_many = _batch(*(create_request("badba7c") for _ in range(101)))
    assert await _invalid_field(h.stub.BatchCreateTasks(too_many)) == "requests"


# --- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"app_config_type": 0}, "app_config_type"),
        ({"app_config_type": 9}, "app_config_type"),
        ({"contract_address": "0x1234"}, "contract_address"),
        ({"contract_address": "ab" * 21}, "contract_address"),
        ({"app_id": "has space"}, "app_id"),
        ({"app_id": "a" * 129}, "app_id"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"expected_compose_hash": "abc"}, "expected_compose_hash"),
        ({"model_or_domain": "x" * 254}, "model_or_domain"),
        ({"app_name": "line\nbreak"}, "app_name"),
    ],
)
async def test_create_with_bad_field_is_invalid_argument_naming_it(
    h: Harness, fields: dict[str, object], field: str
) -> None:
    assert await _invalid_field(h.stub.CreateTask(create_request(**fields))) == field


async def test_create_with_oversized_metadata_is_invalid_argument(h: Harness) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"blob": "x" * (16 * 1024)})
    field = await _invalid_field(h.stub.CreateTask(create_request(app_metadata=metadata)))
    assert field == "app_metadata"


async def test_create_with_oversized_evidence_names_the_evidence_field(h: Harness) -> None:
    evidence = verification_pb2.Evidence(quote="ab", event_log="x" * (1024 * 1024 + 1))
    field = await _invalid_field(h.stub.CreateTask(create_request(evidence=evidence)))
    assert field == "evidence.event_log"
    not_hex = verification_pb2.Evidence(quote="zz")
    assert await _invalid_field(h.stub.CreateTask(create_request(evidence=not_hex))) == (
        "evidence.quote"
    )


async def test_get_with_malformed_id_is_invalid_argument(h: Harness) -> None:
    assert await _invalid_field(h.stub.GetTask(tasks_pb2.GetTaskRequest(id="nope"))) == "id"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"page_token": "not-a-token!"}, "page_token"),
        ({"status": 42}, "status"),
        ({"app_config_type": 7}, "app_config_type"),
        (
            {
                "created_after": timestamp_pb2.Timestamp(seconds=1_800_000_000),
                "created_before": timestamp_pb2.Timestamp(seconds=1_700_000_000),
            },
            "created_before",
        ),
    ],
)
async def test_list_with_bad_parameter_is_invalid_argument_naming_it(
    h: Harness, request_fields: dict[str, object], field: str
) -> None:
    request = tasks_pb2.ListTasksRequest()
    for name, value in request_fields.items():
        if isinstance(value, timestamp_pb2.Timestamp):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    assert await _invalid_field(h.stub.ListTasks(request)) == field


# --- list --------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_cover_every_task_once(
    h: Harness, app_id: str
) -> None:
    created = [await _create(h, app_id) for _ in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await h.stub.ListTasks(
            tasks_pb2.ListTasksRequest(app_id=app_id, page_size=3, page_token=token)
        )
        seen += [task.id for task in response.tasks]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == [task.id for task in reversed(created)]
    assert pages == 3


async def test_list_filters_by_status_type_and_creation_time(h: Harness, app_id: str) -> None:
    redpill = await _create(h, app_id, app_config_type=verification_pb2.APP_CONFIG_TYPE_REDPILL)
    phala = await _create(h, app_id)
    await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=phala.id))

    async def ids(**fields: object) -> list[str]:
        request = tasks_pb2.ListTasksRequest(app_id=app_id)
        for name, value in fields.items():
            if isinstance(value, timestamp_pb2.Timestamp):
                getattr(request, name).CopyFrom(value)
            else:
                setattr(request, name, value)
        return [task.id for task in (await h.stub.ListTasks(request)).tasks]

    assert await ids(status=CANCELLED) == [phala.id]
    assert await ids(app_config_type=verification_pb2.APP_CONFIG_TYPE_REDPILL) == [redpill.id]
    assert await ids(created_after=phala.created_at) == [phala.id]
    assert await ids(created_before=phala.created_at) == [redpill.id]
    assert await ids() == [phala.id, redpill.id]


async def test_page_token_used_with_other_filters_is_invalid_argument(
    h: Harness, app_id: str
) -> None:
    for _ in range(3):
        await _create(h, app_id)
    first = await h.stub.ListTasks(tasks_pb2.ListTasksRequest(app_id=app_id, page_size=1))
    assert first.next_page_token
    other = tasks_pb2.ListTasksRequest(
        app_id=app_id, page_size=1, page_token=first.next_page_token, status=PENDING
    )
    assert await _invalid_field(h.stub.ListTasks(other)) == "page_token"


async def test_paging_is_stable_under_concurrent_inserts(h: Harness, app_id: str) -> None:
    before = [await _create(h, app_id) for _ in range(6)]
    first = await h.stub.ListTasks(tasks_pb2.ListTasksRequest(app_id=app_id, page_size=3))
    # New tasks arrive between pages: they are newer, so they never shift later pages.
    await asyncio.gather(*(_create(h, app_id) for _ in range(5)))
    second = await h.stub.ListTasks(
        tasks_pb2.ListTasksRequest(app_id=app_id, page_size=3, page_token=first.next_page_token)
    )
    listed = [t.id for t in first.tasks] + [t.id for t in second.tasks]
    assert listed == [task.id for task in reversed(before)]
    assert not second.next_page_token


# --- cancel ------------------------------------------------------------------------


async def test_cancel_of_pending_queued_or_active_task_cancels_it(h: Harness) -> None:
    pending = await _create(h)
    active = await _create(h)
    await start_tasks(h, active.id)
    for task in (pending, active):
        cancelled = (
            await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id, reason="not needed"))
        ).task
        assert cancelled.status == CANCELLED
        assert cancelled.finished_at.seconds > 0
        assert "not needed" in cancelled.error_message


async def test_cancel_of_completed_task_is_failed_precondition(h: Harness) -> None:
    task = await _create(h)
    [attempt] = await start_tasks(h, task.id)
    assert await complete_task(h, task.id, attempt) == 0
    error = await _error(h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in (error.details() or "")


async def test_cancel_of_cancelled_task_is_a_no_op(h: Harness) -> None:
    task = await _create(h)
    first = (await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id))).task
    again = (await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id))).task
    assert again == first
    events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
    assert [e.type for e in events].count("cancelled") == 1


# --- worker lifecycle --------------------------------------------------------------


# --- audit trail and watch ---------------------------------------------------------


async def test_every_state_change_is_in_the_audit_trail(h: Harness) -> None:
    task = await _create(h)
    await wait_for_status(h.stub, task.id, QUEUED)
    [attempt] = await start_tasks(h, task.id, worker_id="worker-7")
    assert await report_progress(h, task.id, attempt, 50, "quote verified") == 0
    assert await complete_task(h, task.id, attempt) == 0
    events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
    # One row per state change; progress is not one.
    assert [(e.type, e.from_status, e.to_status) for e in events] == [
        ("created", tasks_pb2.TASK_STATUS_UNSPECIFIED, PENDING),
        ("queued", PENDING, QUEUED),
        ("started", QUEUED, ACTIVE),
        ("completed", ACTIVE, COMPLETED),
    ]
    assert "worker-7" in events[2].message
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.task_id == task.id and e.request_id for e in events)


async def test_watch_streams_every_change_until_the_task_finishes(h: Harness) -> None:
    task = await _create(h)
    await wait_for_status(h.stub, task.id, QUEUED)
    call = h.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task.id), timeout=30)
    stream = call.__aiter__()
    first = await stream.__anext__()
    assert first.task.status == QUEUED and not first.HasField("event")

    [attempt] = await start_tasks(h, task.id)
    assert await report_progress(h, task.id, attempt, 30) == 0
    assert await report_progress(h, task.id, attempt, 70) == 0
    assert await complete_task(h, task.id, attempt) == 0

    rest = [message async for message in stream]
    # State changes come with their audit event; progress (held in memory and
    # published) comes as the task with its progress, without one.
    assert [m.event.type for m in rest if m.HasField("event")] == ["started", "completed"]
    progress = [m.task.progress for m in rest]
    assert progress == sorted(progress) and progress[-1] == 100
    assert rest[-1].task.status == COMPLETED
    assert await call.code() == grpc.StatusCode.OK


async def test_watch_of_finished_task_sends_it_once_and_ends(h: Harness) -> None:
    task = await _create(h)
    await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id))
    messages = [m async for m in h.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task.id))]
    assert len(messages) == 1 and messages[0].task.status == CANCELLED


async def test_watch_of_unknown_task_is_not_found(h: Harness) -> None:
    call = h.stub.WatchTask(tasks_pb2.WatchTaskRequest(id="00000000-0000-4000-8000-000000000001"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "flags",
    [
        verification_pb2.VerificationFlags(hardware=False),
        verification_pb2.VerificationFlags(hardware=False, os=False),
        verification_pb2.VerificationFlags(hardware=False, source_code=False),
    ],
    ids=["os_and_source_code", "source_code", "os"],
)
async def test_os_or_source_code_without_hardware_is_refused_naming_verification_flags(
    h: Harness, flags: verification_pb2.VerificationFlags
) -> None:
    # Measurements read from a quote nobody verified prove nothing (issue 11).
    field = await _invalid_field(h.stub.CreateTask(create_request("a1", verification_flags=flags)))
    assert field in ("verification_flags", "verificationFlags")
    error = await _error(h.stub.CreateTask(create_request("a1", verification_flags=flags)))
    assert "verificationFlags" in (error.details() or "") and "need hardware" in (
        error.details() or ""
    )
