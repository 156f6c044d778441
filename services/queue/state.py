"""The queue's durable state, kept by the tasks service (QueueStateService):
the pause flag and the finished-task counters, derived from the tasks
themselves, so they survive a Redis flush. The backend holds a copy of the
flag that the workers watch; the queue service brings it in line every tick."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from verifier.tasks.v1 import worker_pb2, worker_pb2_grpc

from shared.grpc_client import LazyChannel

from .errors import QueueUnavailable


@dataclass(frozen=True)
class DurableState:
    paused: bool
    completed: int
    failed: int


class QueueState:
    """QueueStateService for one queue. The channel is opened on first use (a
    grpc.aio channel belongs to the running event loop)."""

    def __init__(
        self,
        tasks_addr: str,
        queue_name: str,
        timeout_seconds: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.tasks_addr = tasks_addr
        # QueueStateService is internal: mutual TLS to the tasks service's internal port.
        self.credentials = credentials
        self.queue_name = queue_name
        self.timeout = timeout_seconds
        self._channel = LazyChannel(tasks_addr, credentials)

    def _client(self) -> worker_pb2_grpc.QueueStateServiceStub:
        return worker_pb2_grpc.QueueStateServiceStub(self._channel.get())

    async def get(self) -> DurableState:
        request = worker_pb2.GetQueueStateRequest(queue_name=self.queue_name)
        try:
            reply = await self._client().GetQueueState(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise QueueUnavailable(f"the queue's state is unavailable: {exc.details()}") from exc
        return _state(reply.state)

    async def set_paused(self, paused: bool, changed_by: str = "operator") -> DurableState:
        request = worker_pb2.SetQueuePausedRequest(
            queue_name=self.queue_name, paused=paused, changed_by=changed_by
        )
        try:
            reply = await self._client().SetQueuePaused(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise QueueUnavailable(f"the queue's state is unavailable: {exc.details()}") from exc
        return _state(reply.state)

    async def close(self) -> None:
        await self._channel.close()


def _state(state: worker_pb2.QueueState) -> DurableState:
    return DurableState(paused=state.paused, completed=state.completed, failed=state.failed)
