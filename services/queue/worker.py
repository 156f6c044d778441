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
import functools
import logging
import sys
import time

from shared import metrics
from shared.entrypoint import new_parser, run_main, until_signalled
from shared.log import get_logger

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


async def run_worker(settings: QueueSettings, stop: asyncio.Event) -> None:
    """One worker until `stop` is set; then the jobs in hand finish first."""
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


def _run(settings: QueueSettings, _args: argparse.Namespace) -> int | None:
    if not settings.redis_url:
        print(
            "REDIS_URL is not set: in the embedded mode the queue service "
            "(python -m services.queue) runs the workers itself",
            file=sys.stderr,
        )
        return 2
    asyncio.run(until_signalled(functools.partial(run_worker, settings)))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(
        "verifier-worker", "A queue worker: verifies queued tasks from Redis (REDIS_URL)"
    )
    return run_main("worker", QueueSettings, _run, argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
