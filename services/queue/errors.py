"""Domain errors of the queue service (mapped to gRPC codes by shared.grpc_server)."""

from __future__ import annotations

from shared.errors import InvalidArgument, ResourceExhausted, Unavailable


class InvalidTaskId(InvalidArgument):
    """EnqueueTask got an empty or malformed task id."""

    def __init__(self, message: str) -> None:
        super().__init__("task_id", message)


class QueueUnavailable(Unavailable):
    """Redis (the queue's store) cannot be reached; the caller may retry."""


class QueueFull(ResourceExhausted):
    """The stream holds queue_max_length jobs already; the caller may retry later."""
