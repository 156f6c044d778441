"""QueueService over gRPC: parse, call the backend, map the result. Nothing else."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from .backend import QueueBackend
from .model import QueueStatusView, WorkerInfo, WorkerState

SERVICE_NAME = queue_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name

_WORKER_STATE = {
    WorkerState.ONLINE: queue_pb2.WORKER_STATE_ONLINE,
    WorkerState.OFFLINE: queue_pb2.WORKER_STATE_OFFLINE,
}


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
    )


class QueueServicer(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self, backend: QueueBackend) -> None:
        self.backend = backend

    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        result = await self.backend.enqueue(request.task_id)
        return queue_pb2.EnqueueTaskResponse(
            job_id=result.job_id, already_enqueued=result.already_enqueued
        )

    async def GetQueueStatus(
        self, request: queue_pb2.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetQueueStatusResponse:
        return queue_pb2.GetQueueStatusResponse(status=status_to_proto(await self.backend.status()))

    async def PauseQueue(
        self, request: queue_pb2.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.PauseQueueResponse:
        return queue_pb2.PauseQueueResponse(status=status_to_proto(await self.backend.pause()))

    async def ResumeQueue(
        self, request: queue_pb2.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ResumeQueueResponse:
        return queue_pb2.ResumeQueueResponse(status=status_to_proto(await self.backend.resume()))

    async def ListWorkers(
        self, request: queue_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.ListWorkersResponse:
        workers = await self.backend.list_workers()
        return queue_pb2.ListWorkersResponse(workers=[worker_to_proto(w) for w in workers])
