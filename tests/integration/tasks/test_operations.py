"""TaskOperationsService over real gRPC on PostgreSQL and SQLite: retry one task or
every failed one in batches, the dead letters with each attempt's last error, and
retention by count that audits each removal and never removes an app's latest task."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from verifier.tasks.v1 import (
    operations_pb2,
    operations_pb2_grpc,
    tasks_pb2,
    worker_pb2,
)
from verifier.verification.v1 import verification_pb2

from tests.integration.tasks.conftest import (
    BACKENDS,
    Harness,
    Verification,
    app_latest_failed,
    complete_task,
    create_request,
    fail_task,
    fresh_database,
    passing_summary,
    start_harness,
    start_tasks,
)


@pytest.fixture(scope="module", params=BACKENDS)
async def oh(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    verification: Verification,
) -> AsyncIterator[Harness]:
    server = request.getfixturevalue("postgres_server_url") if request.param != "sqlite" else None
    async with fresh_database(request.param, server, tmp_path_factory.mktemp("ops")) as url:
        harness = await start_harness(
            request.param, url, verification=verification, SCHEDULER_ENABLED="false"
        )
        yield harness
        await harness.close()


def ops(h: Harness) -> operations_pb2_grpc.TaskOperationsServiceStub:
    return operations_pb2_grpc.TaskOperationsServiceStub(h.channel)


async def failed_task(h: Harness, app_id: str, error: str = "evidence malformed") -> str:
    task = (await h.stub.CreateTask(create_request(app_id))).task
    [attempt] = await start_tasks(h, task.id)
    assert await fail_task(h, task.id, attempt, error) == 0
    return task.id


async def test_a_retried_task_starts_a_new_run_whose_attempts_name_no_earlier_run(
    oh: Harness,
) -> None:
    """An operator retry must verify anew: GetTaskInputs never names an attempt
    of the failed run (the engine could adopt its report)."""
    task_id = await failed_task(oh, uuid.uuid4().hex[:12])  # attempt 1, failed
    await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id=task_id, reason="operator"))

    async def earlier(attempt: int) -> list[int]:
        reply = await oh.worker.GetTaskInputs(
            worker_pb2.GetTaskInputsRequest(
                tasks=[worker_pb2.TaskAttempt(task_id=task_id, attempt=attempt)]
            )
        )
        (item,) = reply.tasks
        assert item.status.code == 0, item.status
        return list(item.earlier_attempts)

    assert await start_tasks(oh, task_id) == [2]
    assert await earlier(2) == []
    assert await start_tasks(oh, task_id) == [3]
    assert await earlier(3) == [2]


async def test_retry_puts_a_failed_task_back_and_refuses_a_pending_one(oh: Harness) -> None:
    app_id = uuid.uuid4().hex[:12]
    task_id = await failed_task(oh, app_id)
    retried = await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id=task_id, reason="flaky"))
    assert retried.task.status in (tasks_pb2.TASK_STATUS_PENDING, tasks_pb2.TASK_STATUS_QUEUED)
    assert retried.task.error_message == ""
    assert not retried.task.HasField("finished_at")
    events = (await oh.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task_id))).events
    retry_event = [e for e in events if e.type == "retried"]
    assert len(retry_event) == 1 and retry_event[0].message == "flaky"
    assert retry_event[0].from_status == tasks_pb2.TASK_STATUS_FAILED
    await oh.queue.wait_for_calls(1)
    assert task_id in oh.queue.calls  # handed to the queue again

    pending = (await oh.stub.CreateTask(create_request(app_id))).task
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id=pending.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id="nope"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retry_all_failed_of_an_app_in_batches(oh: Harness) -> None:
    app_id = uuid.uuid4().hex[:12]
    ids = [await failed_task(oh, app_id) for _ in range(5)]
    other = await failed_task(oh, uuid.uuid4().hex[:12])
    response = await ops(oh).RetryFailedTasks(
        operations_pb2.RetryFailedTasksRequest(app_id=app_id, batch_size=2)
    )
    assert (response.retried, response.batches) == (5, 3)
    for task_id in ids:
        task = (await oh.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))).task
        assert task.status != tasks_pb2.TASK_STATUS_FAILED
    untouched = (await oh.stub.GetTask(tasks_pb2.GetTaskRequest(id=other))).task
    assert untouched.status == tasks_pb2.TASK_STATUS_FAILED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops(oh).RetryFailedTasks(operations_pb2.RetryFailedTasksRequest(batch_size=5000))
    assert caught.value.details().startswith("batch_size:")


async def test_dead_letters_list_each_attempts_last_error_not_verdicts(oh: Harness) -> None:
    app_id = uuid.uuid4().hex[:12]
    task_id = await failed_task(oh, app_id, "first attempt: collateral unreachable")
    await ops(oh).RetryTask(operations_pb2.RetryTaskRequest(id=task_id))
    [attempt] = await start_tasks(oh, task_id)
    assert await fail_task(oh, task_id, attempt, "gave up after 2 attempts") == 0
    verdict_failed = (await oh.stub.CreateTask(create_request(app_id))).task
    [attempt] = await start_tasks(oh, verdict_failed.id)
    summary = passing_summary(verdict=verification_pb2.VERDICT_FAILED)
    assert await complete_task(oh, verdict_failed.id, attempt, summary) == 0
    letters = await ops(oh).ListDeadLetters(operations_pb2.ListDeadLettersRequest(app_id=app_id))
    assert [d.task.id for d in letters.dead_letters] == [task_id]
    attempts = [(a.attempt, a.error) for a in letters.dead_letters[0].attempts]
    assert attempts == [
        (1, "first attempt: collateral unreachable"),
        (2, "gave up after 2 attempts"),
    ]
    assert letters.dead_letters[0].task.attempts == 2


async def test_retention_by_count_audits_removals_and_keeps_the_apps_latest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, oh: Harness
) -> None:
    server = request.getfixturevalue("postgres_server_url") if oh.backend != "sqlite" else None
    tmp = tmp_path_factory.mktemp("retention")
    async with fresh_database(oh.backend, server, tmp) as url:
        h = await start_harness(
            oh.backend,
            url,
            verification=oh.verification,
            SCHEDULER_ENABLED="false",
            RETENTION_FAILED_MAX_COUNT="2",
            RETENTION_FAILED_MAX_AGE_SECONDS="0",
            RETENTION_INTERVAL_SECONDS="3600",
            RETENTION_BATCH_SIZE="1",
        )
        try:
            latest = await app_latest_failed(h)
            others = [await failed_task(h, uuid.uuid4().hex[:12]) for _ in range(4)]
            done = (await h.stub.CreateTask(create_request("abcdef01"))).task  # completed: kept
            [attempt] = await start_tasks(h, done.id)
            assert await complete_task(h, done.id, attempt) == 0

            result = await ops(h).RunRetention(operations_pb2.RunRetentionRequest())
            assert result.removed == 2
            assert dict(result.removed_by_status) == {"failed": 2}
            for task_id in others[:2]:  # the oldest two beyond the newest two
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            for task_id in [latest.id, *others[2:], done.id]:
                await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))
            audit = await ops(h).ListRetentionAudit(operations_pb2.ListRetentionAuditRequest())
            assert {r.task_id for r in audit.records} == set(others[:2])
            assert all(r.reason == "failed beyond the newest 2" for r in audit.records)
            assert all(r.status == tasks_pb2.TASK_STATUS_FAILED for r in audit.records)
            again = await ops(h).RunRetention(operations_pb2.RunRetentionRequest())
            assert again.removed == 0
        finally:
            await h.close()
