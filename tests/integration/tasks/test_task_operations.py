"""The tasks service as operators rely on it: the queue hand-off survives a
queue outage (reconciler), lost queue entries are re-sent, WatchTask sees
changes made through another instance (LISTEN/NOTIFY), stats, health, and the
migrated schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from verifier.ops.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from verifier.tasks.v1 import apps_pb2, apps_pb2_grpc, tasks_pb2, worker_pb2, worker_pb2_grpc
from verifier.verification.v1 import verification_pb2

from services.tasks import migrate
from services.tasks.settings import database_url
from services.tasks.tables import metadata
from tests.support import servers

from .conftest import (
    BACKENDS,
    Verification,
    complete_task,
    create_request,
    fail_task,
    fresh_database,
    start_harness,
    start_queue_standin,
    start_tasks,
    wait_for_status,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
async def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """(backend, URL) of a new empty database."""
    backend: str = request.param
    server = request.getfixturevalue("postgres_server_url") if backend == "postgresql" else None
    async with fresh_database(backend, server, tmp_path) as url:
        yield backend, url


async def test_task_created_while_queue_is_down_is_enqueued_once_it_is_back(
    fresh: tuple[str, str],
) -> None:
    backend, url = fresh
    h = await start_harness(
        backend, url, RECONCILE_AFTER_SECONDS="0.2", RECONCILE_INTERVAL_SECONDS="0.1"
    )
    try:
        h.queue.available = False
        task = (await h.stub.CreateTask(create_request())).task
        assert task.status == tasks_pb2.TASK_STATUS_PENDING
        # The reconciler keeps trying while the queue is down; the task stays PENDING.
        await asyncio.wait_for(h.queue.wait_for_calls(3), 30)
        still = (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task.id))).task
        assert still.status == tasks_pb2.TASK_STATUS_PENDING and not still.queue_job_id
        h.queue.available = True
        queued = await wait_for_status(h.stub, task.id, tasks_pb2.TASK_STATUS_QUEUED)
        assert queued.queue_job_id == h.queue.enqueued[task.id]
    finally:
        await h.close()


async def test_queued_task_whose_queue_entry_was_lost_is_requeued(
    fresh: tuple[str, str],
) -> None:
    backend, url = fresh
    h = await start_harness(backend, url)
    try:
        task = (await h.stub.CreateTask(create_request())).task
        await wait_for_status(h.stub, task.id, tasks_pb2.TASK_STATUS_QUEUED)
        reconciler = h.service.reconciler
        # Not stale yet: nothing to re-send.
        assert await reconciler.reconcile_once() == 0
        # Later than the stale timeout, the queue having lost the job meanwhile.
        h.queue.forget(task.id)
        clock = h.service.store.clock
        h.service.store.clock = lambda: clock() + timedelta(hours=1)
        try:
            assert await reconciler.reconcile_once() == 1
            assert await h.service.dispatcher.send(task.id)
        finally:
            h.service.store.clock = clock
        events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
        assert [e.type for e in events] == ["created", "queued", "requeued"]
        assert task.id in h.queue.enqueued
    finally:
        await h.close()


async def test_stale_task_still_held_by_the_queue_gets_no_requeue_event(
    fresh: tuple[str, str],
) -> None:
    backend, url = fresh
    h = await start_harness(backend, url)
    try:
        task = (await h.stub.CreateTask(create_request())).task
        await wait_for_status(h.stub, task.id, tasks_pb2.TASK_STATUS_QUEUED)
        assert await h.service.dispatcher.send(task.id)  # the queue answers already_enqueued
        events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
        assert [e.type for e in events] == ["created", "queued"]
    finally:
        await h.close()


async def test_stats_count_by_status_and_measure_processing_time(
    fresh: tuple[str, str], verification: Verification
) -> None:
    backend, url = fresh
    h = await start_harness(backend, url, verification=verification)
    try:
        store = h.service.store
        base = datetime(2026, 1, 1, tzinfo=UTC)
        durations = [1.0, 2.0, 3.0, 4.0, 10.0]
        for index, seconds in enumerate(durations):
            store.clock = lambda: base
            task = (await h.stub.CreateTask(create_request())).task
            [attempt] = await start_tasks(h, task.id)
            store.clock = lambda seconds=seconds: base + timedelta(seconds=seconds)
            if index % 2:
                assert await fail_task(h, task.id, attempt) == 0
            else:
                assert await complete_task(h, task.id, attempt) == 0
        store.clock = lambda: base
        cancelled = (await h.stub.CreateTask(create_request())).task
        await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=cancelled.id))
        await h.stub.CreateTask(create_request())

        stats = await h.stub.GetTaskStats(tasks_pb2.GetTaskStatsRequest())
        assert (stats.total, stats.completed, stats.failed, stats.cancelled) == (7, 3, 2, 1)
        assert stats.pending + stats.queued == 1 and stats.active == 0
        assert stats.average_processing_seconds == pytest.approx(4.0)
        # percentile_cont(0.95) over 1, 2, 3, 4, 10: 4 + 0.8 * (10 - 4)
        assert stats.p95_processing_seconds == pytest.approx(8.8)

        later = tasks_pb2.GetTaskStatsRequest()
        later.created_after.FromDatetime(base + timedelta(days=1))
        assert (await h.stub.GetTaskStats(later)).total == 0
    finally:
        await h.close()


async def test_health_serves_with_the_database_and_reports_the_queue_as_optional(
    fresh: tuple[str, str],
) -> None:
    backend, url = fresh
    standin, queue_server = await start_queue_standin()
    h = await start_harness(backend, url, queue=(standin, queue_server))
    try:
        await queue_server.stop(0)
        health = health_pb2_grpc.HealthStub(h.channel)
        diagnostics = diagnostics_pb2_grpc.DiagnosticsServiceStub(h.channel)
        report = await diagnostics.CheckDependencies(diagnostics_pb2.CheckDependenciesRequest())
        states = {d.name: d for d in report.dependencies}
        assert states["database"].state == diagnostics_pb2.DEPENDENCY_STATE_UP
        assert states["database"].required
        assert ("PostgreSQL" if backend == "postgresql" else "SQLite") in states["database"].version
        assert states["queue"].state == diagnostics_pb2.DEPENDENCY_STATE_DOWN
        assert not states["queue"].required
        # Health is set after the first round of probes, whose queue probe
        # retries UNAVAILABLE (the channel's retry policy) before it gives up.
        check = await _health_once_set(health, "verifier.tasks.v1.TaskService")
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await h.close()


async def _health_once_set(
    health: health_pb2_grpc.HealthStub, service: str
) -> health_pb2.HealthCheckResponse:
    # The server says NOT_SERVING until its first probe round has decided
    # (shared.grpc_server): wait for that round, not only for the name.
    last: health_pb2.HealthCheckResponse | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        try:
            last = await health.Check(health_pb2.HealthCheckRequest(service=service))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if last.status == health_pb2.HealthCheckResponse.SERVING:
                return last
        await asyncio.sleep(0.05)
    assert last is not None, f"{service} never appeared in health"
    return last


async def test_migrations_create_every_column_the_store_uses(fresh: tuple[str, str]) -> None:
    _, url = fresh
    await asyncio.to_thread(migrate.upgrade, url)
    await asyncio.to_thread(migrate.upgrade, url)  # a second run is a no-op
    engine = sa.create_engine(database_url(url, "sync"))
    try:
        inspector = sa.inspect(engine)
        for table in metadata.tables.values():
            columns = {column["name"] for column in inspector.get_columns(table.name)}
            assert columns == {column.name for column in table.columns}, table.name
        indexes = {index["name"] for index in inspector.get_indexes("tasks")}
        assert {
            "ix_tasks_created",
            "ix_tasks_status_created",
            "ix_tasks_app_id_created",
            "ix_tasks_type_created",
        } <= indexes
    finally:
        engine.dispose()
    # The single head of the migrations (each engineer's file chains onto the last).

    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    assert await asyncio.to_thread(migrate.current_revision, url) == head


async def test_inline_evidence_is_compressed_with_lz4_on_postgresql(
    postgres_server_url: str, tmp_path: Path
) -> None:
    async with fresh_database("postgresql", postgres_server_url, tmp_path) as url:
        await asyncio.to_thread(migrate.upgrade, url)
        engine = sa.create_engine(database_url(url, "sync"))
        try:
            with engine.connect() as conn:
                has_lz4 = conn.execute(
                    sa.text(
                        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                        " WHERE name = 'default_toast_compression'"
                    )
                ).scalar()
                method = conn.execute(
                    sa.text(
                        "SELECT attcompression FROM pg_attribute"
                        " WHERE attrelid = 'tasks'::regclass AND attname = 'evidence'"
                    )
                ).scalar()
        finally:
            engine.dispose()
        assert method == ("l" if has_lz4 else "")


async def test_one_notification_per_statement_names_every_task_it_changed(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """250 audit rows in one statement: two notifications (200 ids a payload at most)."""
    async with fresh_database("postgresql", postgres_server_url, tmp_path) as url:
        await asyncio.to_thread(migrate.upgrade, url)
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as listener,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as writer,
        ):
            await listener.execute("LISTEN task_events")
            await writer.execute(
                "INSERT INTO tasks (id, job_name, app_config_type, app_metadata,"
                " verification_flags, status, created_at, updated_at)"
                " SELECT gen_random_uuid(), 'verify', 'phala_cloud', '{}', '{}', 'pending',"
                " now(), now() FROM generate_series(1, 250)"
            )
            await writer.execute(
                "INSERT INTO task_events (task_id, type, to_status, progress, created_at)"
                " SELECT id, 'created', 'pending', 0, now() FROM tasks"
            )
            ids = {
                str(row[0])
                for row in await (await writer.execute("SELECT id FROM tasks")).fetchall()
            }
            payloads: list[str] = []
            async for notify in listener.notifies(timeout=5, stop_after=2):
                payloads.append(notify.payload)
        assert sorted(len(p.split(",")) for p in payloads) == [50, 200]
        assert {task_id for p in payloads for task_id in p.split(",")} == ids


async def test_watch_sees_changes_made_through_another_instance(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """Two service instances on one PostgreSQL: LISTEN/NOTIFY carries the change."""
    async with fresh_database("postgresql", postgres_server_url, tmp_path) as url:
        first = await start_harness("postgresql", url)
        second = await start_harness("postgresql", url)
        try:
            task = (await first.stub.CreateTask(create_request())).task
            await wait_for_status(first.stub, task.id, tasks_pb2.TASK_STATUS_QUEUED)
            call = first.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task.id), timeout=30)
            stream = call.__aiter__()
            assert (await stream.__anext__()).task.status == tasks_pb2.TASK_STATUS_QUEUED
            await start_tasks(second, task.id)
            await second.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id))
            rest = [message.event.type async for message in stream]
            assert rest == ["started", "cancelled"]
        finally:
            await first.close()
            await second.close()


async def test_many_watchers_share_one_listener_connection(
    postgres_server_url: str, tmp_path: Path
) -> None:
    async with fresh_database("postgresql", postgres_server_url, tmp_path) as url:
        h = await start_harness("postgresql", url)
        try:
            task = (await h.stub.CreateTask(create_request())).task
            await wait_for_status(h.stub, task.id, tasks_pb2.TASK_STATUS_QUEUED)
            calls = [
                h.stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task.id), timeout=30)
                for _ in range(20)
            ]
            streams = [call.__aiter__() for call in calls]
            await asyncio.gather(*(stream.__anext__() for stream in streams))
            listeners = await _listener_connections(url)
            assert listeners == 1
            await h.stub.CancelTask(tasks_pb2.CancelTaskRequest(id=task.id))

            async def rest(stream: object) -> list[str]:
                return [m.event.type async for m in stream]  # type: ignore[attr-defined]

            results = await asyncio.gather(*(rest(stream) for stream in streams))
            assert results == [["cancelled"]] * 20
            assert all([await call.code() == grpc.StatusCode.OK for call in calls])
        finally:
            await h.close()


async def _listener_connections(url: str) -> int:
    """Connections of this database waiting in LISTEN (pg_stat_activity)."""
    database = url.rsplit("/", 1)[1]
    server = url.rsplit("/", 1)[0] + "/postgres"
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'",
            (database,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_an_acknowledgement_after_the_start_adds_no_audit_line(
    fresh: tuple[str, str],
) -> None:
    backend, url = fresh
    h = await start_harness(backend, url)
    try:
        h.queue.available = False
        task = (await h.stub.CreateTask(create_request())).task
        await asyncio.wait_for(h.queue.wait_for_calls(1), 10)
        # The worker starts the task before the queue's acknowledgement is recorded.
        worker = worker_pb2_grpc.TaskWorkerServiceStub(h.channel)
        started = await worker.StartTasks(
            worker_pb2.StartTasksRequest(worker_id="w1", task_ids=[task.id])
        )
        assert started.tasks[0].attempt == 1
        h.queue.available = True
        # A first send (not a re-send): the queue did not know it, and lost nothing.
        assert await h.service.dispatcher.send_many([(task.id, False)]) == 1
        events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task.id))).events
        assert [e.type for e in events] == ["created", "started"]
        current = (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task.id))).task
        assert current.status == tasks_pb2.TASK_STATUS_ACTIVE
        assert current.queue_job_id == h.queue.enqueued[task.id]
    finally:
        await h.close()


async def test_the_dispatcher_enqueues_in_batches(fresh: tuple[str, str]) -> None:
    backend, url = fresh
    h = await start_harness(backend, url)
    try:
        h.queue.available = False
        created = await asyncio.gather(*(h.stub.CreateTask(create_request()) for _ in range(60)))
        await asyncio.wait_for(h.queue.wait_for_calls(1), 10)
        h.queue.available = True
        ids = [c.task.id for c in created]
        h.queue.batches.clear()
        assert await h.service.dispatcher.send_many([(i, False) for i in ids]) == 60
        # One EnqueueTasks call for the 60 (the background senders may still be
        # retrying some of them meanwhile, in batches of their own).
        assert 60 in h.queue.batches
        for task_id in ids:
            task = (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))).task
            assert task.status == tasks_pb2.TASK_STATUS_QUEUED
            assert task.queue_job_id == h.queue.enqueued[task_id]
    finally:
        await h.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_postgresql_restart_costs_a_create_retried_with_its_request_id_no_error(
    mode: str,
) -> None:
    with servers.throwaway_postgres() as server, servers.postgres_database(server.url) as url:
        h = await start_harness("postgresql", url, DATABASE_POOL_SIZE="4")
        try:
            # Fill the pool: concurrent calls each hold a connection.
            await asyncio.gather(*(h.stub.CreateTask(create_request()) for _ in range(8)))
            request_id = f"restart-{mode}"
            first = (await h.stub.CreateTask(create_request(request_id=request_id))).task
            await asyncio.to_thread(server.restart, mode)
            # Every pooled connection died with the server; each call still answers.
            again = await asyncio.gather(
                *(h.stub.CreateTask(create_request(request_id=request_id)) for _ in range(6))
            )
            assert {r.task.id for r in again} == {first.id}
            fresh_task = (await h.stub.CreateTask(create_request(request_id=f"{mode}-2"))).task
            assert fresh_task.id != first.id
            got = await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=fresh_task.id))
            assert got.task.request_id == f"{mode}-2"
        finally:
            await h.close()


async def test_a_postgresql_restart_costs_the_apps_no_error() -> None:
    # The apps' engine heals as the task store does: the pool checks a
    # connection before handing it out, and a read runs once more on a fresh one.
    with servers.throwaway_postgres() as server, servers.postgres_database(server.url) as url:
        h = await start_harness("postgresql", url, SCHEDULER_ENABLED="false")
        try:
            stub = apps_pb2_grpc.AppServiceStub(h.channel)
            app = apps_pb2.App(
                id="0123456789abcdef0123456789abcdef",
                name="demo",
                app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
                model_or_domain="demo.phala.network",
            )
            created = (await stub.CreateApp(apps_pb2.CreateAppRequest(app=app))).app
            # Several connections in the pool, all of which die with the server.
            await asyncio.gather(
                *(stub.GetApp(apps_pb2.GetAppRequest(id=created.id)) for _ in range(4))
            )
            await asyncio.to_thread(server.restart, "immediate")
            again = await asyncio.gather(
                *(stub.GetApp(apps_pb2.GetAppRequest(id=created.id)) for _ in range(4))
            )
            assert {r.app.id for r in again} == {created.id}
            listed = await stub.ListApps(apps_pb2.ListAppsRequest(page_size=10))
            assert created.id in {a.id for a in listed.apps}
        finally:
            await h.close()
