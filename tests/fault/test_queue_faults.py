"""Faults of the pipeline, with the real services as processes: a dependency
down (the workers wait and say why), the verification service killed in the
middle of a batch, kill -9 of a worker holding a full batch, and tasks created
while the queue service or Redis is down. Redis here is a private
redis-server that restarts empty (no persistence)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import tasks_pb2

from services.queue.broker import GROUP, QueueKeys
from tests.fault.stack import PipelineStack, RedisProcess, pipeline_stack, stack_env
from tests.support import servers

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stack(
    postgres_server_url: str,
    redis_process: RedisProcess,
    s3: servers.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PipelineStack]:
    with servers.postgres_database(postgres_server_url, prefix="verifier_faults") as database:
        env = stack_env(
            database_url=database,
            redis_url=redis_process.url,
            s3=s3,
            workdir=tmp_path_factory.mktemp("faults"),
            queue_name=f"faults-{uuid.uuid4().hex[:8]}",
            retry_budget_seconds="120",
            retry_base_seconds="0.5",
        )
        with pipeline_stack(env, workers=2) as running:
            yield running


async def _wait(predicate: object, what: str, stack: PipelineStack, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def _types(events: list[tasks_pb2.TaskEvent]) -> list[str]:
    return [event.type for event in events]


async def test_workers_wait_while_verification_is_down_and_say_why(
    stack: PipelineStack,
) -> None:
    verification = stack.service("verification")
    verification.stop()
    try:
        created = await stack.create_task()

        async def idle_for_verification() -> bool:
            reasons = (await stack.queue_status()).idle_reasons
            return any(reason.startswith("verification service") for reason in reasons)

        await _wait(idle_for_verification, "the workers to say why they are idle", stack)
        await asyncio.sleep(1.0)
        # Nothing was taken: the task is still waiting on the queue, not failed.
        assert (await stack.get_task(created.id)).status == tasks_pb2.TASK_STATUS_QUEUED
    finally:
        verification.start()
        verification.wait_serving()
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert task.attempts == 1
    types = _types(await stack.events(created.id))
    assert types.count("started") == 1
    assert types.count("completed") == 1


async def test_verification_killed_mid_batch_costs_time_not_tasks(stack: PipelineStack) -> None:
    verification = stack.service("verification")
    # A backlog first (queue paused), so a batch is still in hand when the poll
    # looks: created one by one, 40 tasks can drain before it sees one.
    async with stack.channel("queue") as channel:
        queue = queue_pb2_grpc.QueueServiceStub(channel)
        await queue.PauseQueue(queue_pb2.PauseQueueRequest())
        created = [await stack.create_task() for _ in range(40)]
        for task in created:
            await stack.wait_status(task.id, tasks_pb2.TASK_STATUS_QUEUED)
        await queue.ResumeQueue(queue_pb2.ResumeQueueRequest())

    async def jobs_in_hand() -> bool:
        return (await stack.queue_status()).active > 0

    await _wait(jobs_in_hand, "jobs in hand", stack)
    verification.kill()
    await asyncio.sleep(2.0)
    verification.start()
    verification.wait_serving()
    tasks = await stack.wait_finished([t.id for t in created], within=180)
    assert [t.status for t in tasks] == [tasks_pb2.TASK_STATUS_COMPLETED] * len(tasks), [
        t.error_message for t in tasks if t.status != tasks_pb2.TASK_STATUS_COMPLETED
    ]
    for task in tasks:
        assert _types(await stack.events(task.id)).count("completed") == 1


async def test_worker_killed_holding_a_full_batch_completes_every_task_exactly_once(
    stack: PipelineStack,
) -> None:
    victim = next(w for w in stack.workers if w.running)
    assert victim.proc is not None
    victim_pid = victim.proc.pid
    batch = int(stack.env["QUEUE_CONCURRENCY"])
    verification = stack.service("verification")
    async with stack.channel("queue") as channel:
        queue = queue_pb2_grpc.QueueServiceStub(channel)
        await queue.PauseQueue(queue_pb2.PauseQueueRequest())
        created = [await stack.create_task() for _ in range(40)]
        for task in created:
            await stack.wait_status(task.id, tasks_pb2.TASK_STATUS_QUEUED)

        async def only_the_pause_holds_them() -> bool:
            workers = [
                w
                for w in (await queue.ListWorkers(queue_pb2.ListWorkersRequest())).workers
                if w.state == queue_pb2.WORKER_STATE_ONLINE
            ]
            return len(workers) >= 2 and all(w.idle_reason == "queue paused" for w in workers)

        await _wait(only_the_pause_holds_them, "both workers to see their peers serving", stack)
        # A stalled verification service keeps each worker's first batch in hand.
        verification.freeze()
        await queue.ResumeQueue(queue_pb2.ResumeQueueRequest())

    held: list[str] = []

    async def victim_holds_a_full_batch() -> bool:
        async with stack.channel("queue") as channel:
            workers = (
                await queue_pb2_grpc.QueueServiceStub(channel).ListWorkers(
                    queue_pb2.ListWorkersRequest()
                )
            ).workers
        for worker in workers:
            if worker.pid == victim_pid and len(worker.jobs_in_hand) == batch:
                held[:] = worker.jobs_in_hand
                return True
        return False

    try:
        await _wait(victim_holds_a_full_batch, "the victim to hold a full batch", stack)
        victim.kill()
    finally:
        verification.freeze(False)
    tasks = await stack.wait_finished([t.id for t in created], within=180)
    victim.start()  # back to two workers for the next tests
    assert [t.status for t in tasks] == [tasks_pb2.TASK_STATUS_COMPLETED] * len(tasks)
    assert len(held) == batch and set(held) <= {t.id for t in tasks}
    for task in tasks:
        types = _types(await stack.events(task.id))
        assert types.count("completed") == 1, (task.id, types)


async def test_job_whose_workers_keep_dying_with_it_fails_its_task(stack: PipelineStack) -> None:
    regular = [w for w in stack.workers if w.running]
    for worker in regular:
        worker.stop()
    redis = Redis.from_url(stack.env["REDIS_URL"])
    stream = QueueKeys(stack.env["QUEUE_NAME"]).stream
    try:
        created = await stack.create_task()
        # Five workers took the job and died with it: one read it, the others
        # claimed it in turn (each hand-out counts a delivery).
        taken: list[object] = []
        for _ in range(100):
            taken = await redis.xreadgroup(GROUP, "died-1", {stream: ">"}, count=1, block=100)
            if taken:
                break
        assert taken, "the task never reached the stream"
        (entry_id, _fields) = taken[0][1][0]  # type: ignore[index]
        for died in range(2, 6):
            assert await redis.xclaim(stream, GROUP, f"died-{died}", 0, [entry_id])
        # The sixth delivery is one too many (JOB_MAX_DELIVERIES 5, the tasks
        # service's limit: StartTasks fails the task instead of starting it).
        for worker in regular:
            worker.start()
        (task,) = await stack.wait_finished([created.id], within=90)
    finally:
        for worker in regular:
            if not worker.running:
                worker.start()
        await redis.aclose()
    assert task.status == tasks_pb2.TASK_STATUS_FAILED
    assert "handed this task out 6 times (more than the limit of 5)" in task.error_message
    types = _types(await stack.events(created.id))
    assert "started" not in types and types[-1] == "failed"


async def test_task_created_while_the_queue_service_is_down_completes_after_it_returns(
    stack: PipelineStack,
) -> None:
    queue = stack.service("queue")
    queue.stop()
    try:
        created = await stack.create_task()
        await asyncio.sleep(1.0)
        assert (await stack.get_task(created.id)).status == tasks_pb2.TASK_STATUS_PENDING
    finally:
        queue.start()
        queue.wait_serving()
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_COMPLETED, task.error_message


async def test_task_created_while_redis_is_down_completes_after_it_returns(
    stack: PipelineStack, redis_process: RedisProcess
) -> None:
    redis_process.stop()
    try:
        created = await stack.create_task()
        await asyncio.sleep(1.0)
        assert (await stack.get_task(created.id)).status == tasks_pb2.TASK_STATUS_PENDING
    finally:
        redis_process.start()  # empty: the stream and its group are gone too
    (task,) = await stack.wait_finished([created.id])
    assert task.status == tasks_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert _types(await stack.events(created.id)).count("completed") == 1


def test_worker_logs_are_json_lines_with_task_and_worker_ids(stack: PipelineStack) -> None:
    lines = [
        json.loads(line)
        for worker in stack.workers
        for line in worker.tail(200_000).splitlines()
        if line.startswith("{")
    ]
    job_lines = [line for line in lines if str(line.get("event", "")).startswith("job.")]
    assert job_lines
    assert all(line.get("task_id") and line.get("worker_id") for line in job_lines)
