"""The whole pipeline through real gRPC services run as processes, with the real
dstack vector: PostgreSQL, Redis and S3 (SeaweedFS) real; one worker process.
And the embedded queue mode (no Redis, the queue service's own workers)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from verifier.verification.v1 import verification_pb2

from tests.fault.stack import PipelineStack, pipeline_stack, stack_env
from tests.support import servers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    postgres_server_url: str,
    redis_url: str,
    s3: servers.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PipelineStack]:
    with servers.postgres_database(postgres_server_url, prefix="verifier_pipeline") as database:
        env = stack_env(
            database_url=database,
            redis_url=redis_url,
            s3=s3,
            workdir=tmp_path_factory.mktemp("pipeline"),
            queue_name=f"pipeline-{uuid.uuid4().hex[:8]}",
        )
        with pipeline_stack(env, workers=1) as running:
            yield running


def _types(events: list[tasks_pb2.TaskEvent]) -> list[str]:
    return [event.type for event in events]


async def test_dstack_vector_task_completes_through_the_pipeline(stack: PipelineStack) -> None:
    created = await stack.create_task()
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert task.verdict == verification_pb2.VERDICT_PASSED
    assert task.progress == 100
    assert task.s3_key and task.s3_bucket
    assert task.queue_job_id
    checks = {c.check: c.status for c in task.check_results}
    for check in (
        verification_pb2.CHECK_HARDWARE,
        verification_pb2.CHECK_OS,
        verification_pb2.CHECK_SOURCE_CODE,
    ):
        assert checks[check] == verification_pb2.CHECK_STATUS_PASSED
    events = await stack.events(created.id)
    types = _types(events)
    assert types.count("completed") == 1
    assert types.count("started") == 1
    # One audit row per state change; progress is published to watchers, not
    # written as rows. "queued" is absent when the worker started the task
    # before the dispatcher recorded the queue's acknowledgement.
    assert [t for t in types if t != "queued"] == ["created", "started", "completed"], types
    assert types.count("queued") <= 1
    # The worker's calls carry the id of the request that created the task.
    (created_event,) = [e for e in events if e.type == "created"]
    assert created_event.request_id
    assert {e.request_id for e in events} == {created_event.request_id}


async def test_failed_check_is_a_final_result_and_not_retried(stack: PipelineStack) -> None:
    created = await stack.create_task(expectedComposeHash="0" * 64)
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_FAILED
    assert task.verdict == verification_pb2.VERDICT_FAILED
    assert task.attempts == 1
    types = _types(await stack.events(created.id))
    assert types.count("started") == 1


async def test_malformed_evidence_fails_the_task_without_retries(stack: PipelineStack) -> None:
    created = await stack.create_task(
        evidence={"quote": "00" * 64, "eventLog": "[]", "collateral": "{}"}
    )
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_FAILED
    assert task.error_message
    assert task.attempts == 1


async def test_cancelled_task_is_skipped_by_the_worker(stack: PipelineStack) -> None:
    async with stack.channel("queue") as queue_channel, stack.channel("tasks") as tasks_channel:
        queue = queue_pb2_grpc.QueueServiceStub(queue_channel)
        await queue.PauseQueue(queue_pb2.PauseQueueRequest())
        try:
            created = await stack.create_task()
            await tasks_pb2_grpc.TaskServiceStub(tasks_channel).CancelTask(
                tasks_pb2.CancelTaskRequest(id=created.id, reason="test")
            )
        finally:
            await queue.ResumeQueue(queue_pb2.ResumeQueueRequest())
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_CANCELLED
    # Give the worker the job, then check it never started the task.
    await stack.wait_finished([(await stack.create_task()).id])
    assert "started" not in _types(await stack.events(created.id))


async def test_queue_status_and_workers_over_grpc(stack: PipelineStack) -> None:
    status = await stack.queue_status()
    assert status.backend == "redis"
    assert status.workers_online == 1
    async with stack.channel("queue") as channel:
        workers = (
            await queue_pb2_grpc.QueueServiceStub(channel).ListWorkers(
                queue_pb2.ListWorkersRequest()
            )
        ).workers
    assert [w.state for w in workers] == [queue_pb2.WORKER_STATE_ONLINE]


def test_worker_without_redis_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "services.queue.worker"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


@pytest.fixture(scope="module")
def embedded_stack(
    postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineStack]:
    with servers.postgres_database(postgres_server_url, prefix="verifier_embedded") as database:
        env = stack_env(
            database_url=database,
            redis_url="",
            s3=None,
            workdir=tmp_path_factory.mktemp("embedded"),
            queue_name="embedded",
        )
        with pipeline_stack(env) as running:
            yield running


async def test_embedded_queue_runs_the_pipeline_without_redis(
    embedded_stack: PipelineStack,
) -> None:
    created = [await embedded_stack.create_task() for _ in range(3)]
    tasks = await embedded_stack.wait_finished([t.id for t in created])
    assert [t.status for t in tasks] == [tasks_pb2.TASK_STATUS_COMPLETED] * 3
    status = await embedded_stack.queue_status()
    assert status.backend == "embedded"
    assert status.completed == 3
    assert status.workers_online == 1


async def test_embedded_queue_restarted_gets_back_the_tasks_it_held(
    embedded_stack: PipelineStack,
) -> None:
    async with embedded_stack.channel("queue") as channel:
        await queue_pb2_grpc.QueueServiceStub(channel).PauseQueue(queue_pb2.PauseQueueRequest())
    queue = embedded_stack.service("queue")
    try:
        created = [await embedded_stack.create_task() for _ in range(2)]
        for task in created:
            await embedded_stack.wait_status(task.id, tasks_pb2.TASK_STATUS_QUEUED)
        # The in-memory queue loses its jobs with the process...
        queue.stop()
        queue.start()
        queue.wait_serving()
        # ...and takes them back from the tasks service on start (not after the
        # tasks service's 15-minute stale sweep).
        status = await embedded_stack.queue_status()
        assert status.paused, "the pause survives the restart"
        for _ in range(100):
            if status.waiting == 2:
                break
            await asyncio.sleep(0.1)
            status = await embedded_stack.queue_status()
        assert status.waiting == 2
    finally:
        async with embedded_stack.channel("queue") as channel:
            await queue_pb2_grpc.QueueServiceStub(channel).ResumeQueue(
                queue_pb2.ResumeQueueRequest()
            )
    tasks = await embedded_stack.wait_finished([t.id for t in created], within=30)
    assert [t.status for t in tasks] == [tasks_pb2.TASK_STATUS_COMPLETED] * 2
    for task in tasks:
        assert _types(await embedded_stack.events(task.id)).count("completed") == 1
