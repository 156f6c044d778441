"""The tasks service as the queue's job actions use it (TaskService over the
tasks service's internal port, as the queue service itself): the FAILED jobs
are the failed tasks, and a discarded job's task is cancelled through
CancelTask, so its audit trail says so. The channel is opened on first use (a
grpc.aio channel belongs to the running event loop)."""

from __future__ import annotations

import grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.grpc_client import create_channel

from .errors import QueueUnavailable
from .model import Job, JobState, JobView


class TaskDirectory:
    def __init__(
        self,
        tasks_addr: str,
        timeout_seconds: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.tasks_addr = tasks_addr
        self.timeout = timeout_seconds
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: tasks_pb2_grpc.TaskServiceStub | None = None

    def _client(self) -> tasks_pb2_grpc.TaskServiceStub:
        if self._stub is None:
            self._channel = create_channel(self.tasks_addr, self.credentials)
            self._stub = tasks_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub

    async def failed(self, page_size: int, page_token: str) -> tuple[list[JobView], str]:
        """A page of FAILED tasks as jobs, newest first, and the tasks service's next token."""
        request = tasks_pb2.ListTasksRequest(
            status=tasks_pb2.TASK_STATUS_FAILED, page_size=page_size, page_token=page_token
        )
        try:
            reply = await self._client().ListTasks(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error("ListTasks", exc) from exc
        return [failed_view(task) for task in reply.tasks], reply.next_page_token

    async def failed_job(self, task_id: str) -> JobView | None:
        """The task as a FAILED job; None when it is unknown or not FAILED."""
        try:
            reply = await self._client().GetTask(
                tasks_pb2.GetTaskRequest(id=task_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise _error("GetTask", exc) from exc
        if reply.task.status != tasks_pb2.TASK_STATUS_FAILED:
            return None
        return failed_view(reply.task)

    async def cancel(self, task_id: str, reason: str) -> None:
        """Cancel the task (its `cancelled` audit event carries the reason).
        A task already cancelled is fine; a finished one is FAILED_PRECONDITION."""
        request = tasks_pb2.CancelTaskRequest(id=task_id, reason=reason)
        try:
            await self._client().CancelTask(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(exc.details() or "the task is finished") from exc
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"task {task_id} is not known to the tasks service") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # The caller's input (the reason), not a fault of the tasks service.
                raise InvalidArgument("reason", exc.details() or "refused") from exc
            raise _error("CancelTask", exc) from exc

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _error(call: str, exc: grpc.aio.AioRpcError) -> QueueUnavailable:
    return QueueUnavailable(f"the tasks service's {call}: {exc.code().name} {exc.details()}")


def failed_view(task: tasks_pb2.Task) -> JobView:
    finished = task.finished_at.ToNanoseconds() / 1e9 if task.HasField("finished_at") else 0.0
    return JobView(
        Job(task.queue_job_id, task.id, attempt=max(task.attempts, 1)),
        JobState.FAILED,
        error=task.error_message,
        finished_at=finished,
    )
