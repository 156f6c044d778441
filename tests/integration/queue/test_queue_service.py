"""QueueService behaviour, the same on Redis and embedded: idempotent enqueue,
pause holding new jobs and resume releasing them, counts, retries, workers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from services.queue.main import build_spec, create_backend
from services.queue.model import JobResult, Outcome
from shared.grpc_client import create_channel
from shared.grpc_server import start_server
from tests.integration.queue.conftest import QueueHarness
from tests.integration.queue.support import wait_until

pytestmark = pytest.mark.integration

# Long enough for a worker to have read the stream several times (read block
# 0.5 s, pause re-read 1 s): what it has not taken by then, it holds back.
SETTLE_SECONDS = 1.5


async def test_enqueue_is_idempotent_per_task(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    first = await harness.enqueue("task-a")
    second = await harness.enqueue("task-a")
    assert not first.already_enqueued
    assert second.already_enqueued
    assert second.job_id == first.job_id
    assert (await harness.status()).waiting == 1


async def test_enqueue_of_a_malformed_task_id_is_invalid_argument(harness: QueueHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.enqueue("not a task id")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_id" in (caught.value.details() or "")


async def test_task_is_enqueued_again_once_its_job_finished(harness: QueueHarness) -> None:
    first = await harness.enqueue("task-b")
    await wait_until(lambda: harness.handler.finished, "the first job to finish")
    await wait_until(lambda: _completed(harness, 1), "the first job to be counted")
    second = await harness.enqueue("task-b")
    assert not second.already_enqueued
    assert second.job_id != first.job_id
    await wait_until(lambda: len(harness.handler.finished) == 2, "the second job to run")


async def _completed(harness: QueueHarness, count: int) -> bool:
    return (await harness.status()).completed >= count


async def test_pause_holds_new_jobs_and_resume_releases_them(harness: QueueHarness) -> None:
    paused = await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    assert paused.status.paused
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    for n in range(3):
        await harness.enqueue(f"held-{n}")
    await asyncio.sleep(SETTLE_SECONDS)
    assert harness.handler.runs == []
    status = await harness.status()
    assert (status.paused, status.waiting, status.active) == (True, 3, 0)

    resumed = await harness.client.ResumeQueue(queue_pb2.ResumeQueueRequest())
    assert not resumed.status.paused
    await wait_until(lambda: _completed(harness, 3), "the held jobs to complete")
    assert sorted(job.task_id for job in harness.handler.runs) == ["held-0", "held-1", "held-2"]
    assert (await harness.status()).waiting == 0


async def test_pausing_twice_and_resuming_twice_are_no_ops(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    again = await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    assert again.status.paused
    await harness.client.ResumeQueue(queue_pb2.ResumeQueueRequest())
    again_resumed = await harness.client.ResumeQueue(queue_pb2.ResumeQueueRequest())
    assert not again_resumed.status.paused


async def test_paused_worker_finishes_jobs_in_hand_and_takes_nothing_new(
    harness: QueueHarness,
) -> None:
    handler = harness.handler
    handler.gate.clear()
    await harness.enqueue("in-hand")
    await wait_until(lambda: handler.in_hand == 1, "the job to be in hand")
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    await harness.enqueue("after-pause")
    handler.gate.set()
    await wait_until(lambda: _completed(harness, 1), "the job in hand to complete")
    await asyncio.sleep(SETTLE_SECONDS)
    assert [job.task_id for job in handler.runs] == ["in-hand"]
    status = await harness.status()
    assert (status.waiting, status.active, status.completed) == (1, 0, 1)


async def test_status_counts_completed_failed_and_delayed_jobs(harness: QueueHarness) -> None:
    handler = harness.handler
    handler.script("ok", JobResult(Outcome.COMPLETED, "passed"))
    handler.script("broken", JobResult(Outcome.FAILED, "malformed evidence"))
    handler.script("flaky", JobResult(Outcome.RETRY, "UNAVAILABLE", delay_seconds=600))
    for task_id in ("ok", "broken", "flaky"):
        await harness.enqueue(task_id)
    await wait_until(lambda: len(handler.finished) == 3, "three runs")

    async def settled() -> queue_pb2.QueueStatus | None:
        status = await harness.status()
        return status if status.delayed == 1 and status.completed == 1 else None

    status = await wait_until(settled, "the counts to settle")
    assert (status.waiting, status.active, status.completed, status.failed, status.delayed) == (
        0,
        0,
        1,
        1,
        1,
    )
    assert status.queue_name == harness.settings.queue_name
    assert status.concurrency == harness.settings.queue_concurrency
    assert status.workers_online == 1
    assert status.backend == ("redis" if harness.settings.redis_url else "embedded")
    # A delayed job still holds its task: enqueueing it again adds nothing.
    assert (await harness.enqueue("flaky")).already_enqueued


async def test_transient_result_runs_the_job_again_with_the_next_attempt(
    harness: QueueHarness,
) -> None:
    handler = harness.handler
    handler.script("flaky", JobResult(Outcome.RETRY, "UNAVAILABLE", delay_seconds=0.2))
    job_id = (await harness.enqueue("flaky")).job_id
    await wait_until(lambda: _completed(harness, 1), "the retried job to complete")
    runs = handler.runs_of("flaky")
    assert [job.attempt for job in runs] == [1, 2]
    assert {job.job_id for job in runs} == {job_id}


async def test_workers_run_at_most_queue_concurrency_jobs_at_once(harness: QueueHarness) -> None:
    handler = harness.handler
    handler.gate.clear()
    for n in range(5):
        await harness.enqueue(f"c-{n}")
    await wait_until(lambda: handler.in_hand == 3, "three jobs in hand")
    await asyncio.sleep(SETTLE_SECONDS)
    assert handler.in_hand == harness.settings.queue_concurrency == 3
    assert (await harness.status()).waiting == 2
    handler.gate.set()
    await wait_until(lambda: _completed(harness, 5), "all five jobs")


async def test_list_workers_shows_the_worker_and_its_jobs_in_hand(harness: QueueHarness) -> None:
    handler = harness.handler
    handler.gate.clear()
    await harness.enqueue("shown")

    async def listed() -> list[queue_pb2.Worker]:
        workers = (await harness.client.ListWorkers(queue_pb2.ListWorkersRequest())).workers
        return [w for w in workers if list(w.jobs_in_hand) == ["shown"]]

    (worker,) = await wait_until(listed, "the worker to list its job in hand")
    assert worker.state == queue_pb2.WORKER_STATE_ONLINE
    assert worker.concurrency == 3
    assert worker.pid > 0 and worker.host and worker.id
    assert worker.started_at.seconds > 0
    assert worker.last_heartbeat_at.ToNanoseconds() >= worker.started_at.ToNanoseconds()
    handler.gate.set()

    async def processed() -> bool:
        workers = (await harness.client.ListWorkers(queue_pb2.ListWorkersRequest())).workers
        return any(w.processed == 1 and not w.jobs_in_hand for w in workers)

    await wait_until(processed, "the worker to count the job processed")


async def test_pause_survives_a_restart_of_the_service(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    settings = harness.settings
    backend = create_backend(settings)
    restarted = await start_server(build_spec(settings, backend, handler=harness.handler))
    channel = create_channel(f"127.0.0.1:{restarted.port}")
    try:
        client = queue_pb2_grpc.QueueServiceStub(channel)
        status = (await client.GetQueueStatus(queue_pb2.GetQueueStatusRequest())).status
        assert status.paused
    finally:
        await channel.close()
        await restarted.stop(grace=1.0)
