"""Gates on the worker: a peer's grpc.health.v1 status, followed with Watch.
Workers take no jobs while the tasks or the verification service is not
SERVING (a job taken then would only wait out the outage in hand); the gate's
reason shows on the worker's record (ListWorkers, the queue status)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.log import get_logger

log = get_logger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthWatchEnded(ConnectionError):
    """The peer closed the Watch stream (it is stopping)."""


class ServingGate:
    """Open while the peer answers SERVING on its overall health ("")."""

    def __init__(self, channel: grpc.aio.Channel, label: str) -> None:
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.label = label
        self._reason = f"waiting for the {label}'s health"

    @property
    def reason(self) -> str:
        return self._reason

    def _set(self, reason: str) -> None:
        if reason != self._reason:
            if reason:
                log.warning("worker.dependency_down", dependency=self.label, reason=reason)
            else:
                log.info("worker.dependency_serving", dependency=self.label)
        self._reason = reason

    async def watch(self) -> None:
        """Follow the peer's status until the stream breaks (then raise, and the
        worker's keep_running watches again after a short backoff)."""
        try:
            async for reply in self.stub.Watch(health_pb2.HealthCheckRequest(service="")):
                status = reply.status
                if status == _SERVING:
                    self._set("")
                else:
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    self._set(f"{self.label} {name}")
        except grpc.aio.AioRpcError as exc:
            self._set(f"{self.label} unreachable ({exc.code().name})")
            raise
        self._set(f"{self.label} unreachable (stopping)")
        raise HealthWatchEnded(f"the {self.label} closed its health watch")
