"""Domain errors of the tasks service, on the shared.errors bases that
shared.grpc_server maps to gRPC status codes."""

from __future__ import annotations

from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class InvalidTransition(FailedPrecondition):
    """The task's status does not allow the operation; the message says the status."""

    def __init__(self, task_id: str, status: str, operation: str, hint: str = "") -> None:
        message = f"task {task_id} is {status}; cannot {operation}"
        super().__init__(f"{message} ({hint})" if hint else message)
        self.task_id = task_id
        self.status = status


class StaleAttempt(FailedPrecondition):
    """A worker-path call for an attempt that is not the task's current one."""

    def __init__(self, task_id: str, attempt: int, current: int) -> None:
        super().__init__(
            f"task {task_id} attempt {attempt} is stale (the current attempt is {current})"
        )
        self.task_id = task_id


class InvalidPageToken(InvalidArgument):
    def __init__(self, message: str) -> None:
        super().__init__("page_token", message)


class ChangeFeedUnavailable(Unavailable):
    """WatchTask cannot follow changes right now (the listener is not connected)."""
