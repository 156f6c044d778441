"""AppService over real gRPC on PostgreSQL and SQLite: CRUD with page tokens, the
latest trust status, history, schedules paused, resumed and triggered, and the
scheduler's passes creating each due task exactly once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from verifier.tasks.v1 import apps_pb2, apps_pb2_grpc, tasks_pb2
from verifier.verification.v1 import verification_pb2

from services.tasks import apps as domain
from services.tasks.apps_store import AppStore
from services.tasks.scheduler import SCHEDULER_IDENTITY
from shared.principal import bind_identity, identity_var
from tests.integration.tasks.conftest import (
    BACKENDS,
    Harness,
    Verification,
    complete_task,
    fresh_database,
    start_harness,
    start_tasks,
)


@pytest.fixture(scope="module", params=BACKENDS)
async def ah(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    verification: Verification,
) -> AsyncIterator[Harness]:
    """The tasks service with its background scheduler off: each test runs passes itself."""
    server = request.getfixturevalue("postgres_server_url") if request.param != "sqlite" else None
    async with fresh_database(request.param, server, tmp_path_factory.mktemp("apps")) as url:
        harness = await start_harness(
            request.param, url, verification=verification, SCHEDULER_ENABLED="false"
        )
        yield harness
        await harness.close()


def apps_stub(h: Harness) -> apps_pb2_grpc.AppServiceStub:
    return apps_pb2_grpc.AppServiceStub(h.channel)


def new_app(**fields: object) -> apps_pb2.App:
    app = apps_pb2.App(
        id=uuid.uuid4().hex,
        name="demo",
        app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
        model_or_domain="demo.phala.network",
    )
    for name, value in fields.items():
        if hasattr(value, "DESCRIPTOR"):
            getattr(app, name).CopyFrom(value)
        else:
            setattr(app, name, value)
    return app


async def create(h: Harness, **fields: object) -> apps_pb2.App:
    response = await apps_stub(h).CreateApp(apps_pb2.CreateAppRequest(app=new_app(**fields)))
    return response.app


async def test_create_get_update_delete(ah: Harness) -> None:
    stub = apps_stub(ah)
    created = await create(ah, schedule=apps_pb2.Schedule(interval_seconds=3600))
    assert created.state == apps_pb2.APP_STATE_ENABLED
    assert created.source == apps_pb2.APP_SOURCE_API
    assert created.verification_flags.hardware  # defaults filled in
    assert created.HasField("next_run_at")  # never verified: due now
    got = await stub.GetApp(apps_pb2.GetAppRequest(id=created.id))
    assert got.app == created
    assert not got.HasField("trust_task")

    updated = await stub.UpdateApp(
        apps_pb2.UpdateAppRequest(
            id=created.id,
            app=apps_pb2.App(name="renamed", model_or_domain="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    assert updated.app.name == "renamed"
    assert updated.app.model_or_domain == "demo.phala.network"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateApp(apps_pb2.CreateAppRequest(app=new_app(id=created.id)))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    deleted = await stub.DeleteApp(apps_pb2.DeleteAppRequest(id=created.id))
    assert deleted.app.state == apps_pb2.APP_STATE_DELETED
    assert not deleted.app.HasField("next_run_at")
    listed = await stub.ListApps(apps_pb2.ListAppsRequest(page_size=500))
    assert created.id not in {app.id for app in listed.apps}
    only_deleted = await stub.ListApps(apps_pb2.ListAppsRequest(state=apps_pb2.APP_STATE_DELETED))
    assert created.id in {app.id for app in only_deleted.apps}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"schedule": apps_pb2.Schedule(cron="every minute")}, "schedule.cron"),
        ({"schedule": apps_pb2.Schedule(interval_seconds=5)}, "schedule.interval_seconds"),
        ({"id": "not hex!"}, "app.id"),
        ({"contract_address": "0x12"}, "contract_address"),
    ],
)
async def test_bad_app_is_invalid_argument_naming_the_field(
    ah: Harness, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(ah, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")


async def test_list_pages_in_id_order_with_tokens(ah: Harness) -> None:
    kind = verification_pb2.APP_CONFIG_TYPE_REDPILL
    ids = sorted(
        [(await create(ah, app_config_type=kind, model_or_domain="org/model")).id for _ in range(5)]
    )
    stub = apps_stub(ah)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListApps(
            apps_pb2.ListAppsRequest(page_size=2, page_token=token, app_config_type=kind)
        )
        seen += [app.id for app in page.apps]
        token = page.next_page_token
        if not token:
            break
    assert [i for i in seen if i in ids] == ids
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListApps(apps_pb2.ListAppsRequest(page_token="garbage"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_scheduler_creates_each_due_task_once_and_trust_status_follows(ah: Harness) -> None:
    scheduler = ah.service.scheduler
    mine = [await create(ah) for _ in range(3)]
    first = await scheduler.run_once()
    assert first.ran and first.created >= 3
    again = await scheduler.run_once()
    assert again.created == 0  # every task is pending: nothing is due
    stub = apps_stub(ah)
    for app in mine:
        got = (await stub.GetApp(apps_pb2.GetAppRequest(id=app.id))).app
        assert got.latest_task_id
        assert got.latest_task_status in (
            tasks_pb2.TASK_STATUS_PENDING,
            tasks_pb2.TASK_STATUS_QUEUED,
        )
        assert not got.HasField("next_run_at")  # its task runs
        task = (await ah.stub.GetTask(tasks_pb2.GetTaskRequest(id=got.latest_task_id))).task
        assert task.created_by == "scheduler"
        assert task.app_id == app.id
        # Owned by the scheduler's identity, not by nobody (a submitter's list).
        assert (await ah.service.store.get_task(task.id)).owner == "scheduler"
        history = await stub.ListAppTasks(apps_pb2.ListAppTasksRequest(id=app.id))
        assert [t.id for t in history.tasks] == [task.id]

    # The first app's task passes: its trust status is that task, due again in 24 h.
    task_id = (await stub.GetApp(apps_pb2.GetAppRequest(id=mine[0].id))).app.latest_task_id
    [attempt] = await start_tasks(ah, task_id)
    assert await complete_task(ah, task_id, attempt) == 0
    got = await stub.GetApp(apps_pb2.GetAppRequest(id=mine[0].id))
    assert got.trust_task.id == task_id
    assert got.trust_task.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert got.app.latest_verdict == verification_pb2.VERDICT_PASSED
    assert got.app.latest_report_key == "reports/x.json"
    assert got.app.next_run_at.ToSeconds() - got.app.latest_finished_at.ToSeconds() == 86400
    assert (await scheduler.run_once()).created == 0

    # Triggered now (not due for 24 h): one new task; a second trigger while it runs is refused.
    triggered = await stub.TriggerSchedule(apps_pb2.TriggerScheduleRequest(id=mine[0].id))
    assert triggered.task.created_by == "scheduler"
    # An operator's trigger: still the scheduler's task, not the operator's.
    assert (await ah.service.store.get_task(triggered.task.id)).owner == "scheduler"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TriggerSchedule(apps_pb2.TriggerScheduleRequest(id=mine[0].id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    history = await stub.ListAppTasks(apps_pb2.ListAppTasksRequest(id=mine[0].id))
    assert [t.id for t in history.tasks] == [triggered.task.id, task_id]


async def test_a_pass_that_died_before_recording_creates_nothing_new(ah: Harness) -> None:
    app_message = await create(ah)
    store: AppStore = ah.service.apps.apps
    app = await store.get(app_message.id)
    # A pass created the task, then died before it wrote the app's latest task.
    orphan, created = await ah.service.app.create_once(
        domain.task_for(app, domain.scheduled_request_id(app))
    )
    assert created
    result = await ah.service.scheduler.run_once()
    assert result.recovered >= 1
    got = await apps_stub(ah).GetApp(apps_pb2.GetAppRequest(id=app.id))
    assert got.app.latest_task_id == orphan.id
    history = await apps_stub(ah).ListAppTasks(apps_pb2.ListAppTasksRequest(id=app.id))
    assert len(history.tasks) == 1


async def test_a_pass_that_died_as_the_scheduler_is_recovered_too(ah: Harness) -> None:
    """As above, the orphan owned by the scheduler (the test above: by nobody, as
    before the scheduler had an owner)."""
    app_message = await create(ah)
    app = await ah.service.apps.apps.get(app_message.id)
    token = bind_identity(SCHEDULER_IDENTITY)
    try:
        orphan, created = await ah.service.app.create_once(
            domain.task_for(app, domain.scheduled_request_id(app))
        )
    finally:
        identity_var.reset(token)
    assert created
    result = await ah.service.scheduler.run_once()
    assert result.recovered >= 1
    got = await apps_stub(ah).GetApp(apps_pb2.GetAppRequest(id=app.id))
    assert got.app.latest_task_id == orphan.id
    assert (await ah.service.store.get_task(orphan.id)).owner == "scheduler"


async def test_paused_schedule_is_skipped_until_resumed(ah: Harness) -> None:
    stub = apps_stub(ah)
    app = await create(ah)
    paused = await stub.PauseSchedule(apps_pb2.PauseScheduleRequest(id=app.id))
    assert paused.app.schedule_paused
    assert not paused.app.HasField("next_run_at")
    await ah.service.scheduler.run_once()
    assert not (await stub.GetApp(apps_pb2.GetAppRequest(id=app.id))).app.latest_task_id
    schedules = await stub.ListSchedules(apps_pb2.ListSchedulesRequest(page_size=500))
    assert {a.id: a.schedule_paused for a in schedules.apps}[app.id] is True
    await stub.ResumeSchedule(apps_pb2.ResumeScheduleRequest(id=app.id))
    await ah.service.scheduler.run_once()
    assert (await stub.GetApp(apps_pb2.GetAppRequest(id=app.id))).app.latest_task_id


async def test_unknown_app_is_not_found(ah: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await apps_stub(ah).GetApp(apps_pb2.GetAppRequest(id="ab" * 8))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
