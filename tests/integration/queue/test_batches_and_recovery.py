"""The batched intake and worker, the recovery of a queue that lost its data,
and the health gates, on a real Redis (and embedded where it applies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from services.queue.health import ServingGate
from services.queue.model import EnqueueResult
from services.queue.redis_backend import RedisQueue
from services.queue.service import QueueControl
from services.queue.worker import redis_worker
from shared.grpc_client import create_channel
from tests.integration.queue.conftest import QueueHarness, queue_test_settings
from tests.integration.queue.support import RecordingHandler, delete_queue_keys, wait_until

pytestmark = pytest.mark.integration

TASK_A = "3f2b8c1e-8f1d-4a57-9d56-0c7f2b1f4e11"
TASK_B = "4a2b8c1e-8f1d-4a57-9d56-0c7f2b1f4e12"


@contextlib.asynccontextmanager
async def _intake(harness: QueueHarness) -> AsyncIterator[queue_pb2_grpc.QueueIntakeServiceStub]:
    channel = create_channel(f"127.0.0.1:{harness.server.port}")
    try:
        yield queue_pb2_grpc.QueueIntakeServiceStub(channel)
    finally:
        await channel.close()


async def test_enqueue_tasks_answers_one_status_per_task_in_order(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await harness.enqueue(TASK_B)
    async with _intake(harness) as intake:
        reply = await intake.EnqueueTasks(
            queue_pb2.EnqueueTasksRequest(task_ids=[TASK_A, "not a task id", TASK_B, TASK_A])
        )
    assert [t.task_id for t in reply.tasks] == [TASK_A, "not a task id", TASK_B, TASK_A]
    codes = [t.status.code for t in reply.tasks]
    assert codes == [code_pb2.OK, code_pb2.INVALID_ARGUMENT, code_pb2.OK, code_pb2.OK]
    assert "task_ids" in reply.tasks[1].status.message
    assert [t.already_enqueued for t in reply.tasks] == [False, False, True, True]
    assert reply.tasks[0].job_id and reply.tasks[3].job_id == reply.tasks[0].job_id
    assert (await harness.status()).waiting == 2


@pytest.mark.parametrize("count", [0, 501])
async def test_enqueue_tasks_refuses_an_empty_or_oversized_batch(
    harness: QueueHarness, count: int
) -> None:
    async with _intake(harness) as intake:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await intake.EnqueueTasks(
                queue_pb2.EnqueueTasksRequest(task_ids=[f"t-{n}" for n in range(count)])
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_ids" in (caught.value.details() or "")
    assert (await harness.status()).waiting == 0


async def test_worker_takes_its_free_slots_in_one_batch(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    async with _intake(harness) as intake:
        await intake.EnqueueTasks(
            queue_pb2.EnqueueTasksRequest(task_ids=[f"batch-{n}" for n in range(5)])
        )
    await harness.client.ResumeQueue(queue_pb2.ResumeQueueRequest())
    await wait_until(lambda: len(harness.handler.finished) == 5, "the five jobs to run")
    # Concurrency 3: the first read takes three at once, the rest follow.
    assert len(harness.handler.batches[0]) == 3
    assert sorted(t for batch in harness.handler.batches for t in batch) == [
        f"batch-{n}" for n in range(5)
    ]


class _Requeues:
    """Records the requeues QueueControl.recover asks for (the tasks service's
    side of it is tested end to end in tests/fault)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, enqueue_many: object) -> int:
        self.calls += 1
        return 0


async def test_lost_queue_data_triggers_one_requeue_of_the_unfinished_tasks(
    redis_url: str, tmp_path: Path
) -> None:
    settings = queue_test_settings(redis_url, tmp_path)
    backend = RedisQueue(settings)
    requeues = _Requeues()
    control = QueueControl(backend, requeues)
    try:
        await backend.start()
        await control.recover()  # a first start: nothing says the data is whole
        await control.recover()
        assert requeues.calls == 1
        await backend.enqueue_many(["kept-while-whole"])
        await control.recover()
        assert requeues.calls == 1
        # A flush, or a restart without persistence: every key of the queue is gone.
        await delete_queue_keys(redis_url, settings.queue_name)
        await control.recover()
        await control.recover()
        assert requeues.calls == 2
    finally:
        await backend.close()
        await delete_queue_keys(redis_url, settings.queue_name)


async def test_requeue_that_did_not_finish_is_started_over(redis_url: str, tmp_path: Path) -> None:
    settings = queue_test_settings(redis_url, tmp_path)
    backend = RedisQueue(settings)
    attempts: list[int] = []

    async def requeue(enqueue_many: object) -> int:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ConnectionError("the tasks service went away mid-requeue")
        return 0

    control = QueueControl(backend, requeue)
    try:
        await backend.start()
        with pytest.raises(ConnectionError):
            await control.recover()
        await control.recover()
        await control.recover()
        assert attempts == [0, 1]
    finally:
        await backend.close()
        await delete_queue_keys(redis_url, settings.queue_name)


async def test_requeue_enqueues_through_the_backend_once_per_task(
    redis_url: str, tmp_path: Path
) -> None:
    settings = queue_test_settings(redis_url, tmp_path)
    backend = RedisQueue(settings)
    seen: list[list[EnqueueResult]] = []

    async def requeue(enqueue_many: object) -> int:
        results = await enqueue_many(["lost-1", "lost-2"])  # type: ignore[operator]
        results += await enqueue_many(["lost-1"])  # type: ignore[operator]
        seen.append(results)
        return 2

    try:
        await backend.start()
        await QueueControl(backend, requeue).recover()
        (results,) = seen
        assert [r.already_enqueued for r in results] == [False, False, True]
        assert (await backend.status()).waiting == 2
    finally:
        await backend.close()
        await delete_queue_keys(redis_url, settings.queue_name)


@contextlib.asynccontextmanager
async def _health_server() -> AsyncIterator[tuple[health.aio.HealthServicer, int]]:
    """A real gRPC server with only the health service: a peer whose status the test sets."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


async def test_worker_takes_nothing_while_a_dependency_is_not_serving_and_says_why(
    redis_url: str, tmp_path: Path
) -> None:
    settings = queue_test_settings(redis_url, tmp_path)
    service = RedisQueue(settings)
    handler = RecordingHandler()
    async with _health_server() as (peer, port):
        await peer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        channel = create_channel(f"127.0.0.1:{port}")
        worker = redis_worker(settings)
        stop = asyncio.Event()
        running = asyncio.create_task(
            worker.run(handler, stop, [ServingGate(channel, "verification service")])
        )
        try:
            await service.start()
            await service.enqueue_many(["held-by-the-gate"])

            async def gate_reason() -> bool:
                reasons = (await service.status()).idle_reasons
                return reasons == ("verification service NOT_SERVING",)

            await wait_until(gate_reason, "the worker to publish why it is idle")
            (listed,) = await service.list_workers()
            assert listed.idle_reason == "verification service NOT_SERVING"
            await asyncio.sleep(1.0)
            assert handler.runs == []
            await peer.set("", health_pb2.HealthCheckResponse.SERVING)
            await wait_until(lambda: handler.finished, "the job to run once it serves")
            await wait_until(lambda: _no_reasons(service), "the idle reason to clear")
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await worker.backend.close()
            await channel.close()
            await service.close()
            await delete_queue_keys(redis_url, settings.queue_name)
    assert [job.task_id for job in handler.runs] == ["held-by-the-gate"]


async def _no_reasons(service: RedisQueue) -> bool:
    return (await service.status()).idle_reasons == ()
