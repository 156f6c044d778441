"""The gRPC surface of TaskOperationsService: parse, call, map."""

from __future__ import annotations

import grpc
from verifier.tasks.v1 import operations_pb2, operations_pb2_grpc

from . import mapping
from .model import TaskStatus
from .operations_service import TaskOperations

SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["TaskOperationsService"].full_name


class TaskOperationsServicer(operations_pb2_grpc.TaskOperationsServiceServicer):
    def __init__(self, ops: TaskOperations) -> None:
        self.ops = ops

    async def RetryTask(
        self, request: operations_pb2.RetryTaskRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.RetryTaskResponse:
        task = await self.ops.retry(request.id, request.reason)
        return operations_pb2.RetryTaskResponse(task=mapping.task_to_proto(task))

    async def RetryFailedTasks(
        self, request: operations_pb2.RetryFailedTasksRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.RetryFailedTasksResponse:
        retried, batches = await self.ops.retry_failed(
            app_id=request.app_id,
            app_config_type=mapping.app_config_type_from_proto(request.app_config_type),
            created_after=mapping.time_from_proto(request.created_after, "created_after", request),
            created_before=mapping.time_from_proto(
                request.created_before, "created_before", request
            ),
            errors_only=request.errors_only,
            batch_size=request.batch_size,
            limit=request.limit,
        )
        return operations_pb2.RetryFailedTasksResponse(retried=retried, batches=batches)

    async def ListDeadLetters(
        self, request: operations_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.ListDeadLettersResponse:
        page, token = await self.ops.dead_letters(
            request.app_id, request.page_size, request.page_token
        )
        response = operations_pb2.ListDeadLettersResponse(next_page_token=token)
        for task, attempts in page:
            letter = response.dead_letters.add()
            letter.task.CopyFrom(mapping.task_to_proto(task))
            for attempt in attempts:
                item = letter.attempts.add(attempt=attempt.attempt, error=attempt.error)
                mapping.time_to_proto(attempt.at, item.time)
        return response

    async def RunRetention(
        self, request: operations_pb2.RunRetentionRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.RunRetentionResponse:
        removed = await self.ops.run_retention()
        return operations_pb2.RunRetentionResponse(
            removed=sum(removed.values()), removed_by_status=removed
        )

    async def ListRetentionAudit(
        self, request: operations_pb2.ListRetentionAuditRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.ListRetentionAuditResponse:
        size = request.page_size or 50
        response = operations_pb2.ListRetentionAuditResponse()
        for row in await self.ops.ops.audit(min(max(size, 1), 500)):
            record = response.records.add(
                task_id=row["task_id"],
                app_id=row["app_id"],
                status=mapping.status_to_proto(TaskStatus(row["status"])),
                s3_key=row["s3_key"],
                reason=row["reason"],
            )
            mapping.time_to_proto(row["task_created_at"], record.task_created_at)
            mapping.time_to_proto(row["removed_at"], record.removed_at)
        return response
