"""The batched worker path's verification step through the real services, run
as processes: tasks (PostgreSQL), verification (S3 over HTTP, SeaweedFS) and
queue (Redis, no workers: this test plays the worker). StartTasks gives the
attempts, VerifyTasks reads the inputs from the tasks service and streams
signed summaries, CompleteTasks records them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from verifier.tasks.v1 import tasks_pb2, worker_pb2, worker_pb2_grpc
from verifier.verification.v1 import engine_pb2, engine_pb2_grpc, verification_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from services.verification.report import verify_report_signature
from tests.fault.stack import PipelineStack, pipeline_stack, stack_env
from tests.support import servers

pytestmark = pytest.mark.e2e

OK = grpc.StatusCode.OK.value[0]


@pytest.fixture(scope="module")
def stack(
    postgres_server_url: str,
    redis_url: str,
    s3: servers.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PipelineStack]:
    with servers.postgres_database(postgres_server_url, prefix="verifier_vtasks") as database:
        env = stack_env(
            database_url=database,
            redis_url=redis_url,
            s3=s3,
            workdir=tmp_path_factory.mktemp("verify-tasks"),
            queue_name=f"vtasks-{uuid.uuid4().hex[:8]}",
        )
        with pipeline_stack(env, workers=0) as running:
            yield running


async def _start(stack: PipelineStack, task_ids: list[str]) -> dict[str, int]:
    async with stack.internal_channel("tasks") as channel:
        started = await worker_pb2_grpc.TaskWorkerServiceStub(channel).StartTasks(
            worker_pb2.StartTasksRequest(worker_id="e2e-verify", task_ids=task_ids), timeout=30
        )
    assert all(item.status.code == OK for item in started.tasks), started
    return {item.task_id: item.attempt for item in started.tasks}


async def _verify(
    stack: PipelineStack, leases: dict[str, int]
) -> dict[str, engine_pb2.VerifyTasksResponse]:
    request = engine_pb2.VerifyTasksRequest(
        tasks=[engine_pb2.TaskLease(task_id=t, attempt=a) for t, a in leases.items()]
    )
    async with stack.internal_channel("verification") as channel:
        stub = engine_pb2_grpc.VerificationEngineServiceStub(channel)
        items = [item async for item in stub.VerifyTasks(request, timeout=120)]
    assert len(items) == len(leases)
    return {item.task.task_id: item for item in items}


async def test_a_batch_is_verified_signed_and_completed_through_the_real_services(
    stack: PipelineStack,
) -> None:
    tasks = [await stack.create_task() for _ in range(4)]
    leases = await _start(stack, [t.id for t in tasks])
    results = await _verify(stack, leases)
    async with stack.channel("verification") as channel:
        key = await verification_pb2_grpc.VerificationServiceStub(channel).GetSigningKey(
            pb.GetSigningKeyRequest()
        )
    completions = []
    for task_id, attempt in leases.items():
        item = results[task_id]
        assert item.status.code == OK, item.status
        signed = item.signed_summary
        assert verify_report_signature(
            signed.summary, bytes.fromhex(signed.signature), bytes.fromhex(key.public_key)
        )
        summary = pb.ReportSummary.FromString(signed.summary)
        assert (summary.task_id, summary.attempt) == (task_id, attempt)
        assert summary.s3_key == f"reports/{task_id}/{attempt}.json"
        completions.append(
            worker_pb2.TaskCompletion(
                task=worker_pb2.TaskAttempt(task_id=task_id, attempt=attempt),
                signed_summary=signed,
            )
        )
    async with stack.internal_channel("tasks") as channel:
        acks = await worker_pb2_grpc.TaskWorkerServiceStub(channel).CompleteTasks(
            worker_pb2.CompleteTasksRequest(worker_id="e2e-verify", tasks=completions), timeout=30
        )
    assert all(ack.status.code == OK for ack in acks.acks), acks
    for task in tasks:
        done = await stack.get_task(task.id)
        assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
        assert done.verdict == pb.VERDICT_PASSED
        assert done.s3_key == f"reports/{task.id}/{leases[task.id]}.json"
        async with stack.channel("verification") as channel:
            report = await verification_pb2_grpc.VerificationServiceStub(channel).GetReport(
                pb.GetReportRequest(task_id=task.id)
            )
        assert report.s3_key == done.s3_key


async def test_a_stale_attempt_gets_no_report_and_its_neighbour_is_verified(
    stack: PipelineStack,
) -> None:
    stale, fresh = await stack.create_task(), await stack.create_task()
    first = await _start(stack, [stale.id, fresh.id])
    # The stale task is started again (a redelivered job): attempt 1 lost its lease.
    again = await _start(stack, [stale.id])
    assert again[stale.id] == first[stale.id] + 1
    results = await _verify(stack, {stale.id: first[stale.id], fresh.id: first[fresh.id]})
    assert results[stale.id].status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert results[fresh.id].status.code == OK
    async with stack.channel("verification") as channel:
        public = verification_pb2_grpc.VerificationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await public.GetReport(pb.GetReportRequest(task_id=stale.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
