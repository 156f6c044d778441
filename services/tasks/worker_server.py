"""The gRPC surface of the internal worker contract: TaskWorkerService and
QueueStateService (protos/verifier/tasks/v1/worker.proto). Thin: map each
item, call the worker application, answer one status per item."""

from __future__ import annotations

import grpc
from verifier.tasks.v1 import worker_pb2, worker_pb2_grpc

from . import worker_mapping as wm
from .worker import WorkerApp

WORKER_SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["TaskWorkerService"].full_name
QUEUE_STATE_SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["QueueStateService"].full_name


class TaskWorkerServicer(worker_pb2_grpc.TaskWorkerServiceServicer):
    def __init__(self, app: WorkerApp) -> None:
        self.app = app

    async def StartTasks(
        self, request: worker_pb2.StartTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StartTasksResponse:
        results = await self.app.start(
            request.worker_id, list(request.task_ids), list(request.deliveries)
        )
        return worker_pb2.StartTasksResponse(
            tasks=[
                worker_pb2.StartedTask(
                    task_id=r.task_id, status=wm.status_of(r.error), attempt=r.attempt
                )
                for r in results
            ]
        )

    async def ReportProgress(
        self, request: worker_pb2.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ReportProgressResponse:
        items = [wm.progress_from_proto(item, i) for i, item in enumerate(request.progress)]
        return worker_pb2.ReportProgressResponse(
            acks=wm.acks(await self.app.report_progress(items))
        )

    async def DeferTasks(
        self, request: worker_pb2.DeferTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DeferTasksResponse:
        items = [wm.deferral_from_proto(item, i) for i, item in enumerate(request.tasks)]
        return worker_pb2.DeferTasksResponse(acks=wm.acks(await self.app.defer(items)))

    async def CompleteTasks(
        self, request: worker_pb2.CompleteTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CompleteTasksResponse:
        items = [wm.completion_from_proto(item, i) for i, item in enumerate(request.tasks)]
        return worker_pb2.CompleteTasksResponse(acks=wm.acks(await self.app.complete(items)))

    async def FailTasks(
        self, request: worker_pb2.FailTasksRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.FailTasksResponse:
        items = [wm.failure_from_proto(item, i) for i, item in enumerate(request.tasks)]
        return worker_pb2.FailTasksResponse(acks=wm.acks(await self.app.fail(items)))

    async def GetTaskInputs(
        self, request: worker_pb2.GetTaskInputsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetTaskInputsResponse:
        answers = await self.app.inputs([(t.task_id, t.attempt) for t in request.tasks])
        return worker_pb2.GetTaskInputsResponse(
            tasks=[
                worker_pb2.TaskInput(
                    task=asked,
                    status=wm.status_of(result.error),
                    request=wm.verify_request(task, asked.attempt) if task else None,
                    earlier_attempts=result.earlier_attempts,
                )
                for (result, task), asked in zip(answers, request.tasks, strict=True)
            ]
        )


class QueueStateServicer(worker_pb2_grpc.QueueStateServiceServicer):
    def __init__(self, app: WorkerApp) -> None:
        self.app = app

    async def GetQueueState(
        self, request: worker_pb2.GetQueueStateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetQueueStateResponse:
        state = await self.app.queue_state(request.queue_name)
        return worker_pb2.GetQueueStateResponse(state=wm.queue_state_to_proto(state))

    async def SetQueuePaused(
        self, request: worker_pb2.SetQueuePausedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.SetQueuePausedResponse:
        state = await self.app.set_queue_paused(
            request.queue_name, request.paused, request.changed_by
        )
        return worker_pb2.SetQueuePausedResponse(state=wm.queue_state_to_proto(state))
