"""`python -m services.queue`: QueueService on settings.queue_listen_addr.

With REDIS_URL set the queue lives in Redis and the workers are separate
processes (`python -m services.queue.worker`); with REDIS_URL empty this
process holds the embedded queue and runs its workers itself.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import grpc
from redis.exceptions import RedisError
from verifier.queue.v1 import queue_pb2_grpc

from shared import metrics
from shared.config import Settings, add_config_arguments, settings_from_args
from shared.grpc_server import DependencyProbe, ServiceSpec, serve
from shared.log import configure_logging, get_logger

from . import gauges
from .backend import QueueBackend
from .embedded import EmbeddedQueue
from .errors import QueueUnavailable
from .pipeline import JobHandler, PipelineConnection, requeue_unfinished
from .redis_backend import RedisQueue
from .server import SERVICE_NAME, QueueServicer

log = get_logger(__name__)


def create_backend(settings: Settings) -> QueueBackend:
    """The backend the configuration selects: Redis when REDIS_URL is set."""
    if settings.redis_url:
        return RedisQueue(settings)
    return EmbeddedQueue(settings)


async def _start_redis_queue(queue: RedisQueue) -> None:
    """Create the consumer group, waiting for Redis if it is down at start
    (the service answers UNAVAILABLE meanwhile), then run the maintenance."""
    while True:
        try:
            await queue.start()
            break
        except (QueueUnavailable, RedisError, OSError) as exc:
            log.warning("queue.redis_unavailable", error=str(exc))
            await asyncio.sleep(1.0)
    await queue.maintain()


async def _run_embedded_workers(
    settings: Settings, queue: EmbeddedQueue, handler: JobHandler | None
) -> None:
    await queue.start()
    if handler is not None:
        await queue.run_workers(handler)
        return
    connection = PipelineConnection(settings, queue.record.id)
    # The queue starts empty; the tasks it held before a restart come back.
    requeue = asyncio.create_task(
        requeue_unfinished(
            connection.pipeline.tasks,
            queue.enqueue,
            call_timeout_seconds=settings.call_timeout_seconds,
        )
    )
    try:
        await queue.run_workers(connection.pipeline)
    finally:
        requeue.cancel()
        # Jobs in hand still need the channels: let them finish first.
        await queue.drain()
        await connection.close()


def build_spec(
    settings: Settings,
    backend: QueueBackend | None = None,
    *,
    embedded_handler: JobHandler | None = None,
) -> ServiceSpec:
    """The service's ServiceSpec (tests start it with start_server on port 0).
    `embedded_handler` replaces the pipeline of the embedded workers (tests of
    the queue's own mechanics)."""
    queue = backend or create_backend(settings)

    def register(server: grpc.aio.Server) -> None:
        queue_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(queue), server)

    background: list[Callable[[], Awaitable[None]]] = []
    if isinstance(queue, RedisQueue):
        redis_queue = queue

        async def maintain() -> None:
            await _start_redis_queue(redis_queue)

        background.append(maintain)
        probe = DependencyProbe("redis", queue.probe, required=True)
    else:
        assert isinstance(queue, EmbeddedQueue)
        embedded = queue

        async def workers() -> None:
            await _run_embedded_workers(settings, embedded, embedded_handler)

        background.append(workers)
        probe = DependencyProbe("embedded-queue", queue.probe, required=True)

    if settings.metrics_enabled:

        async def refresh_gauges() -> None:
            await gauges.run(queue, settings.health_probe_interval_seconds)

        background.append(refresh_gauges)

    return ServiceSpec(
        name="queue",
        service_names=[SERVICE_NAME],
        register=register,
        listen_addr=settings.queue_listen_addr,
        probes=[probe],
        background=background,
        on_stop=[queue.close],
        health_probe_interval_seconds=settings.health_probe_interval_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        metrics_listen_addr=settings.queue_metrics_listen_addr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.queue",
        description="QueueService: the verification queue on Redis, or in-process without it",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    configure_logging("queue", settings.log_level, settings.log_format)
    metrics.configure(settings.metrics_enabled)
    asyncio.run(serve(build_spec(settings)))
