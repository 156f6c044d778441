"""A queue service on a real Redis (or embedded), served over real gRPC, with
workers whose job handler records what they are given."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from services.queue.backend import QueueBackend
from services.queue.consumer import BatchWorker
from services.queue.main import build_spec, create_backend
from services.queue.settings import QueueSettings
from shared.grpc_client import create_channel
from shared.grpc_server import RunningServer, start_server
from tests.integration.queue.support import (
    RecordingHandler,
    delete_queue_keys,
    make_settings,
    running_worker,
    unique_queue_name,
)


def queue_test_settings(redis_url: str, data_dir: Path, **overrides: Any) -> QueueSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "queue_name": unique_queue_name(),
        "queue_listen_addr": "127.0.0.1:0",
        "queue_concurrency": 3,
        "worker_heartbeat_seconds": 0.2,
        "worker_offline_after_seconds": 1.0,
        "job_idle_timeout_seconds": 2.0,
        "retry_base_seconds": 0.1,
        "shutdown_grace_seconds": 5.0,
        "health_probe_interval_seconds": 0.5,
        "data_dir": str(data_dir),
        "log_level": "warning",
    }
    values.update(overrides)
    return make_settings(**values)


@dataclass
class QueueHarness:
    """The service (over gRPC) and, in Redis mode, one worker process's machinery."""

    settings: QueueSettings
    backend: QueueBackend
    server: RunningServer
    client: queue_pb2_grpc.QueueServiceStub
    handler: RecordingHandler
    worker: BatchWorker | None

    async def status(self) -> queue_pb2.QueueStatus:
        return (await self.client.GetQueueStatus(queue_pb2.GetQueueStatusRequest())).status

    async def enqueue(self, task_id: str) -> queue_pb2.EnqueueTaskResponse:
        response: queue_pb2.EnqueueTaskResponse = await self.client.EnqueueTask(
            queue_pb2.EnqueueTaskRequest(task_id=task_id)
        )
        return response

    def workers_paused(self) -> bool:
        """True once every worker has observed the paused flag."""
        if self.worker is None:
            return True  # embedded: the workers read the service's own flag
        return self.worker.paused

    def workers_running(self) -> bool:
        return self.worker is None or not self.worker.paused


@contextlib.asynccontextmanager
async def queue_harness(
    settings: QueueSettings, handler: RecordingHandler
) -> AsyncIterator[QueueHarness]:
    backend = create_backend(settings)
    server = await start_server(build_spec(settings, backend, handler=handler))
    channel = create_channel(f"127.0.0.1:{server.port}")
    try:
        if settings.redis_url:
            async with running_worker(settings, handler) as worker:
                yield QueueHarness(
                    settings,
                    backend,
                    server,
                    queue_pb2_grpc.QueueServiceStub(channel),
                    handler,
                    worker,
                )
        else:
            yield QueueHarness(
                settings, backend, server, queue_pb2_grpc.QueueServiceStub(channel), handler, None
            )
    finally:
        handler.gate.set()
        await channel.close()
        await server.stop(grace=1.0)
        if settings.redis_url:
            await delete_queue_keys(settings.redis_url, settings.queue_name)


@pytest.fixture(params=["redis", "embedded"])
async def harness(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[QueueHarness]:
    settings = queue_test_settings(redis_url if request.param == "redis" else "", tmp_path)
    async with queue_harness(settings, RecordingHandler()) as built:
        yield built
