"""The queue's Prometheus gauges (verifier_queue_jobs, verifier_workers), refreshed
from the backend in the background: a scrape reads the last values and never
waits on Redis."""

from __future__ import annotations

from collections import Counter

from shared import metrics
from shared.log import get_logger
from shared.retry import keep_running

from .backend import QueueBackend

log = get_logger(__name__)


async def refresh(backend: QueueBackend) -> None:
    """Read the counts once and publish them."""
    status = await backend.status()
    metrics.queue_counts(
        status.queue_name,
        {
            "waiting": status.waiting,
            "active": status.active,
            "delayed": status.delayed,
            "completed": status.completed,
            "failed": status.failed,
            "paused": int(status.paused),
        },
    )
    states = Counter(worker.state.value for worker in await backend.list_workers())
    metrics.worker_counts({"online": states.get("online", 0), "offline": states.get("offline", 0)})


async def run(backend: QueueBackend, interval_seconds: float) -> None:
    """Refresh forever; a failed read keeps the last values (the health probe says why)."""
    await keep_running("queue gauges", lambda: refresh(backend), every=interval_seconds)
