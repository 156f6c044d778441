"""The queue's Prometheus gauges (verifier_queue_jobs, verifier_workers), refreshed
in the background: a scrape reads the last values and never waits on Redis.

The counts are QueueControl.status()'s, the same as GetQueueStatus: waiting,
active and delayed from the backend; paused, completed and failed from the
tasks database (QueueStateService) when the service has it, so they survive a
Redis flush or restart."""

from __future__ import annotations

from collections import Counter

from shared import metrics
from shared.log import get_logger
from shared.retry import keep_running

from .service import QueueControl

log = get_logger(__name__)


async def refresh(control: QueueControl) -> None:
    """Read the counts once and publish them."""
    status = await control.status()
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
    states = Counter(worker.state.value for worker in await control.list_workers())
    metrics.worker_counts({"online": states.get("online", 0), "offline": states.get("offline", 0)})


async def run(control: QueueControl, interval_seconds: float) -> None:
    """Refresh forever; a failed read keeps the last values (the health probe says why)."""
    await keep_running("queue gauges", lambda: refresh(control), every=interval_seconds)
