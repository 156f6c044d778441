"""Who may read a report: anyone with tasks.read, and a submitter only for its
own owner's tasks. The tasks service knows whose task it is, so a submitter's
GetReport asks it (GetTask, with the submitter's own key forwarded); someone
else's task answers NOT_FOUND, exactly like a task that has no report."""

from __future__ import annotations

from typing import Any

import grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared import errors
from shared.auth import AUTHORIZATION_METADATA_KEY
from shared.config import CommonSettings as Settings
from shared.principal import Identity
from shared.security import internal_channel


class ReportNotVisible(errors.NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no report for task {task_id}")


class ReportAccess:
    """Checks a submitter's right to a task's report; the channel opens lazily."""

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def check(self, task_id: str, identity: Identity) -> None:
        if identity.sees_all_tasks:
            return
        if self._stub is None:
            self._channel = internal_channel(self._settings, "tasks", "verification")
            self._stub = tasks_pb2_grpc.TaskServiceStub(self._channel)
        try:
            await self._stub.GetTask(
                tasks_pb2.GetTaskRequest(id=task_id),
                timeout=self._timeout,
                metadata=((AUTHORIZATION_METADATA_KEY, f"Bearer {identity.token}"),),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise ReportNotVisible(task_id) from None
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise errors.PermissionDenied("this key may not read that task") from None
            raise errors.Unavailable("cannot check the task's owner now; retry later") from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
