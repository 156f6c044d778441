"""The tasks service as the source of a batch's inputs: one
TaskWorkerService.GetTaskInputs call per VerifyTasks batch. The call also
fences: a stale attempt comes back FAILED_PRECONDITION and gets no report."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from verifier.tasks.v1 import worker_pb2_grpc

from . import mapping
from .service import TaskInput, TaskInputSource, TaskInputsUnavailable, TaskLease


class GrpcTaskInputs(TaskInputSource):
    """Build inside the running event loop (grpc.aio channels bind to it)."""

    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float) -> None:
        # The tasks service's internal port (shared.security.internal_channel:
        # mutual TLS with the verification service's certificate).
        self._channel = channel
        self._stub = worker_pb2_grpc.TaskWorkerServiceStub(self._channel)
        self._timeout = timeout_seconds

    async def get(self, leases: Sequence[TaskLease]) -> list[TaskInput]:
        batch = list(leases)
        try:
            response = await self._stub.GetTaskInputs(
                mapping.task_inputs_request(batch), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            fault = TaskInputsUnavailable(
                f"GetTaskInputs: {exc.code().name}: {exc.details() or ''}".rstrip(": ")
            )
            return [TaskInput(lease, error=fault) for lease in batch]
        if len(response.tasks) != len(batch):
            fault = TaskInputsUnavailable(
                f"GetTaskInputs answered {len(response.tasks)} items for {len(batch)}"
            )
            return [TaskInput(lease, error=fault) for lease in batch]
        return [
            mapping.task_input_from_proto(lease, item)
            for lease, item in zip(batch, response.tasks, strict=True)
        ]

    async def aclose(self) -> None:
        await self._channel.close()
