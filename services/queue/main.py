"""`python -m services.queue`: QueueService and QueueIntakeService on
settings.queue_listen_addr.

Both modes have one shape: the backend, the service's background job (start
the store, then every tick: recover a queue that lost its data, maintenance),
and the workers with their own background jobs (consumer.BatchWorker). With
REDIS_URL set the workers are separate processes (`python -m
services.queue.worker`); with REDIS_URL empty the backend's jobs live in this
process's memory and it runs one worker itself.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from verifier.queue.v1 import queue_pb2_grpc
from verifier.tasks.v1 import tasks_pb2_grpc

from shared.entrypoint import new_parser, run_main, serving
from shared.grpc_server import DependencyProbe, ServiceSpec
from shared.log import get_logger
from shared.retry import keep_running
from shared.security import (
    internal_channel,
    internal_credentials,
    internal_target,
    service_security,
)

from . import gauges
from .backend import QueueBackend
from .consumer import MAINTENANCE_TICK_SECONDS, BatchHandler, BatchWorker
from .embedded import EmbeddedQueue
from .errors import QueueUnavailable
from .model import EnqueueResult, WorkerRecord
from .pipeline import PipelineConnection
from .redis_backend import RedisQueue
from .requeue import requeue_unfinished
from .server import INTAKE_SERVICE_NAME, SERVICE_NAME, QueueIntakeServicer, QueueServicer
from .service import QueueControl
from .settings import QueueSettings
from .state import QueueState
from .tasks_client import TaskDirectory

log = get_logger(__name__)


def create_backend(settings: QueueSettings) -> QueueBackend:
    """The backend the configuration selects: Redis when REDIS_URL is set."""
    if settings.redis_url:
        return RedisQueue(settings)
    return EmbeddedQueue(settings)


def create_worker(
    settings: QueueSettings, backend: QueueBackend, record: WorkerRecord
) -> BatchWorker:
    return BatchWorker(
        backend,
        record=record,
        concurrency=settings.queue_concurrency,
        heartbeat_seconds=settings.worker_heartbeat_seconds,
        busy_base_seconds=settings.retry_base_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )


async def _run_service_jobs(control: QueueControl) -> None:
    """Start the store (the service answers UNAVAILABLE until it is up), then
    every tick: recovery of lost data, and maintenance."""
    await keep_running("queue start", control.backend.start, retry_on=(QueueUnavailable, OSError))

    async def tick() -> None:
        await control.recover()
        await control.backend.maintain()

    # Two loops: the tasks service being down must not hold up the maintenance.
    await asyncio.gather(
        keep_running("queue service tick", tick, every=MAINTENANCE_TICK_SECONDS),
        keep_running("queue pause sync", control.sync_pause, every=MAINTENANCE_TICK_SECONDS),
    )


async def _requeue_over(
    settings: QueueSettings, enqueue_many: Callable[[Sequence[str]], Awaitable[list[EnqueueResult]]]
) -> int:
    # ListTasks over the tasks service's internal port, as the queue service itself.
    channel = internal_channel(settings, "tasks", "queue")
    try:
        return await requeue_unfinished(
            tasks_pb2_grpc.TaskServiceStub(channel),
            enqueue_many,
            call_timeout_seconds=settings.call_timeout_seconds,
        )
    finally:
        await channel.close()


async def _run_in_process_worker(
    settings: QueueSettings, backend: QueueBackend, handler: BatchHandler | None
) -> None:
    record = WorkerRecord.create(
        settings.queue_concurrency, started_at=time.time(), suffix="embedded"
    )
    worker = create_worker(settings, backend, record)
    stop = asyncio.Event()  # never set: the service's shutdown cancels this job
    if handler is not None:
        await worker.run(handler, stop)
        return
    connection = PipelineConnection(settings, worker.id)
    try:
        await worker.run(connection.pipeline, stop, connection.gates)
    finally:
        # Jobs in hand still needed the channels: the worker let them finish first.
        await connection.close()


def build_spec(
    settings: QueueSettings,
    backend: QueueBackend | None = None,
    *,
    handler: BatchHandler | None = None,
) -> ServiceSpec:
    """The service's ServiceSpec (tests start it with start_server on port 0).
    `handler` replaces the pipeline of the in-process workers, and turns off
    everything that needs the tasks service: the requeue, and the durable
    pause flag and counters (tests of the queue's own mechanics)."""
    queue = backend or create_backend(settings)
    requeue, state, tasks = None, None, None
    if handler is None:
        requeue = functools.partial(_requeue_over, settings)
        state = QueueState(
            internal_target(settings, "tasks"),
            settings.queue_name,
            settings.call_timeout_seconds,
            internal_credentials(settings, "queue"),
        )
        tasks = TaskDirectory(
            internal_target(settings, "tasks"),
            settings.call_timeout_seconds,
            internal_credentials(settings, "queue"),
        )
    control = QueueControl(queue, requeue, state, tasks)

    def register(server: grpc.aio.Server) -> None:
        queue_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(control), server)
        queue_pb2_grpc.add_QueueIntakeServiceServicer_to_server(
            QueueIntakeServicer(control), server
        )

    background: list[Callable[[], Awaitable[None]]] = [
        functools.partial(_run_service_jobs, control)
    ]
    if queue.in_process_workers:
        background.append(functools.partial(_run_in_process_worker, settings, queue, handler))

    if settings.metrics_enabled:

        async def refresh_gauges() -> None:
            await gauges.run(control, settings.health_probe_interval_seconds)

        background.append(refresh_gauges)

    return ServiceSpec(
        name="queue",
        service_names=[SERVICE_NAME, INTAKE_SERVICE_NAME],
        register=register,
        listen_addr=settings.queue_listen_addr,
        probes=[DependencyProbe(queue.probe_name, queue.probe, required=True)],
        background=background,
        on_stop=[queue.close]
        + ([state.close] if state is not None else [])
        + ([tasks.close] if tasks is not None else []),
        health_probe_interval_seconds=settings.health_probe_interval_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        metrics_listen_addr=settings.queue_metrics_listen_addr,
        security=service_security(settings, "queue"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(
        "python -m services.queue",
        "QueueService: the verification queue on Redis, or in-process without it",
    )
    return run_main("queue", QueueSettings, serving(build_spec), argv, parser=parser)
