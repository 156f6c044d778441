"""Job actions on the queue, the same on Redis and embedded: the jobs of each
state listed with page tokens, a job found by its id or its task's id, a
delayed job promoted to run now, and bad input refused naming the field.
(DiscardJob and the FAILED jobs need the tasks service: tests/integration/
gateway/test_queue_jobs.py runs them on the whole stack.)"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from verifier.queue.v1 import queue_pb2

from services.queue.model import JobResult, Outcome
from tests.integration.queue.conftest import QueueHarness
from tests.integration.queue.support import wait_until

pytestmark = pytest.mark.integration

SETTLE_SECONDS = 1.5


async def list_all(harness: QueueHarness, state: int, page_size: int) -> list[queue_pb2.Job]:
    jobs: list[queue_pb2.Job] = []
    token = ""
    for _ in range(50):
        page = await harness.client.ListJobs(
            queue_pb2.ListJobsRequest(state=state, page_size=page_size, page_token=token)
        )
        assert len(page.jobs) <= page_size
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs
    raise AssertionError("ListJobs never reached its last page")


async def get_job(harness: QueueHarness, job_id: str) -> queue_pb2.Job:
    return (await harness.client.GetJob(queue_pb2.GetJobRequest(id=job_id))).job


async def test_waiting_jobs_are_listed_in_queue_order_a_page_at_a_time(
    harness: QueueHarness,
) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    created = [await harness.enqueue(f"wait-{n}") for n in range(5)]
    waiting = await list_all(harness, queue_pb2.JOB_STATE_WAITING, page_size=2)
    assert [job.task_id for job in waiting] == [f"wait-{n}" for n in range(5)]
    assert [job.id for job in waiting] == [c.job_id for c in created]
    assert {job.state for job in waiting} == {queue_pb2.JOB_STATE_WAITING}
    assert all(job.queued_at.seconds > 0 and job.attempt == 1 for job in waiting)
    assert await list_all(harness, queue_pb2.JOB_STATE_ACTIVE, page_size=2) == []

    # Found by job id and by task id, in its state.
    by_job = await get_job(harness, created[3].job_id)
    by_task = await get_job(harness, "wait-3")
    assert by_job == by_task
    assert (by_job.task_id, by_job.state) == ("wait-3", queue_pb2.JOB_STATE_WAITING)


async def test_active_jobs_show_who_holds_them(harness: QueueHarness) -> None:
    harness.handler.gate.clear()  # every job stays in hand
    for n in range(3):
        await harness.enqueue(f"busy-{n}")
    await wait_until(lambda: harness.handler.in_hand == 3, "three jobs in hand")
    active = await list_all(harness, queue_pb2.JOB_STATE_ACTIVE, page_size=2)
    assert sorted(job.task_id for job in active) == ["busy-0", "busy-1", "busy-2"]
    assert {job.state for job in active} == {queue_pb2.JOB_STATE_ACTIVE}
    assert all(job.deliveries == 1 for job in active)
    if harness.settings.redis_url:
        assert {job.worker for job in active} == {harness.worker.id if harness.worker else ""}
    assert (await get_job(harness, "busy-1")).state == queue_pb2.JOB_STATE_ACTIVE
    harness.handler.gate.set()


async def test_a_delayed_job_is_promoted_to_run_now(harness: QueueHarness) -> None:
    harness.handler.script("slow", JobResult(Outcome.RETRY, "transient", delay_seconds=600))
    first = await harness.enqueue("slow")
    await wait_until(
        lambda: _delayed(harness, 1), "the job to wait out its 600 s backoff", within=10
    )
    [delayed] = await list_all(harness, queue_pb2.JOB_STATE_DELAYED, page_size=10)
    assert (delayed.id, delayed.task_id, delayed.attempt) == (first.job_id, "slow", 2)
    assert delayed.run_at.seconds > delayed.queued_at.seconds + 500

    promoted = await harness.client.PromoteJob(queue_pb2.PromoteJobRequest(id="slow"))
    assert promoted.job.state == queue_pb2.JOB_STATE_WAITING
    await wait_until(lambda: len(harness.handler.runs_of("slow")) == 2, "the second run, now")
    assert harness.handler.runs_of("slow")[1].attempt == 2
    await wait_until(lambda: _completed(harness, 1), "the promoted job to complete")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.client.PromoteJob(queue_pb2.PromoteJobRequest(id=first.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_only_a_delayed_job_is_promoted(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    await harness.enqueue("queued-only")
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.client.PromoteJob(queue_pb2.PromoteJobRequest(id="queued-only"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "waiting" in (caught.value.details() or "")
    # No tasks service here: discard is refused rather than dropping the job.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.client.DiscardJob(queue_pb2.DiscardJobRequest(id="queued-only"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [j.task_id for j in await list_all(harness, queue_pb2.JOB_STATE_WAITING, 10)] == [
        "queued-only"
    ]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (queue_pb2.ListJobsRequest(), "state"),
        (queue_pb2.ListJobsRequest(state=queue_pb2.JOB_STATE_WAITING, page_size=501), "page_size"),
        (queue_pb2.ListJobsRequest(state=queue_pb2.JOB_STATE_WAITING, page_size=-1), "page_size"),
        (
            queue_pb2.ListJobsRequest(state=queue_pb2.JOB_STATE_WAITING, page_token="x!"),
            "page_token",
        ),
        (queue_pb2.GetJobRequest(), "id"),
        (queue_pb2.GetJobRequest(id="not an id"), "id"),
        (queue_pb2.PromoteJobRequest(id="a/b"), "id"),
        (queue_pb2.DiscardJobRequest(id="x", reason="r" * 513), "reason"),
        # The tasks service's rule for a reason, so its refusal never reaches
        # the caller as UNAVAILABLE (the gateway fuzz test found that).
        (queue_pb2.DiscardJobRequest(id="x", reason="\x1a\x9aj"), "reason"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    harness: QueueHarness, request_: object, field: str
) -> None:
    call = {
        queue_pb2.ListJobsRequest: harness.client.ListJobs,
        queue_pb2.GetJobRequest: harness.client.GetJob,
        queue_pb2.PromoteJobRequest: harness.client.PromoteJob,
        queue_pb2.DiscardJobRequest: harness.client.DiscardJob,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")


async def test_a_token_of_another_state_is_refused(harness: QueueHarness) -> None:
    await harness.client.PauseQueue(queue_pb2.PauseQueueRequest())
    await wait_until(harness.workers_paused, "the worker to observe the pause")
    for n in range(3):
        await harness.enqueue(f"tok-{n}")
    page = await harness.client.ListJobs(
        queue_pb2.ListJobsRequest(state=queue_pb2.JOB_STATE_WAITING, page_size=1)
    )
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.client.ListJobs(
            queue_pb2.ListJobsRequest(
                state=queue_pb2.JOB_STATE_DELAYED, page_token=page.next_page_token
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")


async def test_an_unknown_job_is_not_found(harness: QueueHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_job(harness, "0123456789abcdef0123456789abcdef")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def _delayed(harness: QueueHarness, count: int) -> bool:
    return (await harness.status()).delayed >= count


async def _completed(harness: QueueHarness, count: int) -> bool:
    return (await harness.status()).completed >= count
