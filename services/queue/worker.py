"""The worker process: `python -m services.queue.worker`, `verifier-worker`,
`make worker`. Takes up to QUEUE_CONCURRENCY jobs at once from the Redis queue
(one read, one batch) until SIGTERM/SIGINT, then finishes the jobs in hand and
leaves cleanly.

In the embedded mode (REDIS_URL empty) the queue service runs its workers
in-process; a separate worker process has nothing to read from.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from shared import metrics
from shared.config import add_config_arguments, settings_from_args
from shared.log import configure_logging, get_logger

from .consumer import BatchWorker
from .main import create_worker
from .model import WorkerRecord
from .pipeline import PipelineConnection
from .redis_backend import RedisQueue
from .settings import QueueSettings

log = get_logger(__name__)


def redis_worker(settings: QueueSettings) -> BatchWorker:
    """A worker on its own RedisQueue, whose consumer is named after the worker.
    Close `worker.backend` after `run`."""
    record = WorkerRecord.create(settings.queue_concurrency, started_at=time.time())
    # taskiq's logs of its own are not needed: the job log lines carry more.
    logging.getLogger("taskiq").setLevel(logging.WARNING)
    return create_worker(settings, RedisQueue(settings, consumer_name=record.id), record)


async def run_worker(settings: QueueSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = redis_worker(settings)
    connection = PipelineConnection(settings, worker.id)
    exporter = metrics.serve_metrics(settings.worker_metrics_listen_addr)
    try:
        await worker.run(connection.pipeline, stop, connection.gates)
    finally:
        await connection.close()
        await worker.backend.close()
        if exporter is not None:
            exporter.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="verifier-worker",
        description="A queue worker: verifies queued tasks from Redis (REDIS_URL)",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(QueueSettings, args)
    configure_logging("worker", settings.log_level, settings.log_format)
    metrics.configure(settings.metrics_enabled)
    if not settings.redis_url:
        print(
            "REDIS_URL is not set: in the embedded mode the queue service "
            "(python -m services.queue) runs the workers itself",
            file=sys.stderr,
        )
        raise SystemExit(2)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
