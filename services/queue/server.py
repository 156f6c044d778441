"""QueueService and QueueIntakeService over gRPC: parse, call QueueControl, map
the result. Nothing else."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, status_pb2
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from .errors import QueueFull
from .model import JobState, JobView, QueueStatusView, WorkerInfo, WorkerState
from .service import EnqueueItem, QueueControl

SERVICE_NAME = queue_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name
INTAKE_SERVICE_NAME = queue_pb2.DESCRIPTOR.services_by_name["QueueIntakeService"].full_name

_WORKER_STATE = {
    WorkerState.ONLINE: queue_pb2.WORKER_STATE_ONLINE,
    WorkerState.OFFLINE: queue_pb2.WORKER_STATE_OFFLINE,
}


_JOB_STATE = {
    JobState.WAITING: queue_pb2.JOB_STATE_WAITING,
    JobState.ACTIVE: queue_pb2.JOB_STATE_ACTIVE,
    JobState.DELAYED: queue_pb2.JOB_STATE_DELAYED,
    JobState.FAILED: queue_pb2.JOB_STATE_FAILED,
}
_JOB_STATE_FROM = {value: key for key, value in _JOB_STATE.items()}


def job_state_from_proto(state: int) -> JobState | None:
    """None for UNSPECIFIED (and values this build does not know)."""
    return _JOB_STATE_FROM.get(state)  # type: ignore[call-overload]


def job_to_proto(view: JobView) -> queue_pb2.Job:
    job = queue_pb2.Job(
        id=view.job.job_id,
        task_id=view.job.task_id,
        state=_JOB_STATE[view.state],
        attempt=view.job.attempt,
        worker=view.worker,
        deliveries=view.deliveries,
        error=view.error,
    )
    if view.queued_at:
        job.queued_at.CopyFrom(_timestamp(view.queued_at))
    if view.run_at:
        job.run_at.CopyFrom(_timestamp(view.run_at))
    if view.finished_at:
        job.finished_at.CopyFrom(_timestamp(view.finished_at))
    return job


def status_to_proto(view: QueueStatusView) -> queue_pb2.QueueStatus:
    return queue_pb2.QueueStatus(
        queue_name=view.queue_name,
        paused=view.paused,
        waiting=view.waiting,
        active=view.active,
        delayed=view.delayed,
        completed=view.completed,
        failed=view.failed,
        workers_online=view.workers_online,
        concurrency=view.concurrency,
        backend=view.backend,
        idle_reasons=list(view.idle_reasons),
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def worker_to_proto(worker: WorkerInfo) -> queue_pb2.Worker:
    return queue_pb2.Worker(
        id=worker.id,
        host=worker.host,
        pid=worker.pid,
        started_at=_timestamp(worker.started_at),
        last_heartbeat_at=_timestamp(worker.last_heartbeat_at),
        state=_WORKER_STATE[worker.state],
        jobs_in_hand=list(worker.jobs_in_hand),
        concurrency=worker.concurrency,
        processed=worker.processed,
        idle_reason=worker.idle_reason,
    )


def enqueued_to_proto(item: EnqueueItem) -> queue_pb2.EnqueuedTask:
    if item.result is None:
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=f"task_ids: {item.invalid}"
        )
        return queue_pb2.EnqueuedTask(task_id=item.task_id, status=status)
    if item.result.full:
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message="the queue is full; try again later"
        )
        return queue_pb2.EnqueuedTask(task_id=item.task_id, status=status)
    return queue_pb2.EnqueuedTask(
        task_id=item.task_id,
        status=status_pb2.Status(code=code_pb2.OK),
        job_id=item.result.job_id,
        already_enqueued=item.result.already_enqueued,
    )


class QueueServicer(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self, control: QueueControl) -> None:
        self.control = control

    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        result = await self.control.enqueue(request.task_id)
        if result.full:
            raise QueueFull("the queue is full; try again later")
        return queue_pb2.EnqueueTaskResponse(
            job_id=result.job_id, already_enqueued=result.already_enqueued
        )

    async def GetQueueStatus(
        self, request: queue_pb2.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetQueueStatusResponse:
        return queue_pb2.GetQueueStatusResponse(status=status_to_proto(await self.control.status()))

    async def PauseQueue(
        self, request: queue_pb2.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.PauseQueueResponse:
        return queue_pb2.PauseQueueResponse(status=status_to_proto(await self.control.pause()))

    async def ResumeQueue(
        self, request: queue_pb2.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ResumeQueueResponse:
        return queue_pb2.ResumeQueueResponse(status=status_to_proto(await self.control.resume()))

    async def ListWorkers(
        self, request: queue_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ListWorkersResponse:
        workers = await self.control.list_workers()
        return queue_pb2.ListWorkersResponse(workers=[worker_to_proto(w) for w in workers])

    async def ListJobs(
        self, request: queue_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ListJobsResponse:
        jobs, token = await self.control.list_jobs(
            job_state_from_proto(request.state), request.page_size, request.page_token
        )
        return queue_pb2.ListJobsResponse(
            jobs=[job_to_proto(view) for view in jobs], next_page_token=token
        )

    async def GetJob(
        self, request: queue_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetJobResponse:
        return queue_pb2.GetJobResponse(job=job_to_proto(await self.control.get_job(request.id)))

    async def DiscardJob(
        self, request: queue_pb2.DiscardJobRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.DiscardJobResponse:
        view = await self.control.discard(request.id, request.reason)
        return queue_pb2.DiscardJobResponse(job=job_to_proto(view))

    async def PromoteJob(
        self, request: queue_pb2.PromoteJobRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.PromoteJobResponse:
        view = await self.control.promote(request.id)
        return queue_pb2.PromoteJobResponse(job=job_to_proto(view))


class QueueIntakeServicer(queue_pb2_grpc.QueueIntakeServiceServicer):
    def __init__(self, control: QueueControl) -> None:
        self.control = control

    async def EnqueueTasks(
        self, request: queue_pb2.EnqueueTasksRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTasksResponse:
        items = await self.control.enqueue_many(list(request.task_ids))
        return queue_pb2.EnqueueTasksResponse(tasks=[enqueued_to_proto(i) for i in items])
