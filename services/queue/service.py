"""The queue service's side, above the backends: ids validated once, batch
enqueue, pause and resume, status, and the recovery of a queue that lost its
data (a Redis flush or restart without persistence, a fresh embedded queue):
every unfinished task is enqueued again at once.

With a QueueState (the tasks database, the normal case), the pause flag and the
completed/failed counts are the database's: pause and resume write it first,
status reads it, and every tick the backend's copy of the flag (what the
workers watch) is brought in line, so a flushed Redis gets it back within a
second. Without one (tests of the queue's own mechanics), the backend's own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shared.errors import InvalidArgument
from shared.log import get_logger

from .backend import QueueBackend
from .errors import InvalidTaskId, QueueUnavailable
from .model import EnqueueResult, QueueStatusView, WorkerInfo, validate_task_id
from .state import QueueState

log = get_logger(__name__)

# EnqueueTasks takes at most this many tasks a call.
MAX_ENQUEUE_BATCH = 500
# How often the backend's copy of the pause flag is checked against the database's.
PAUSE_SYNC_SECONDS = 1.0

# Enqueues every unfinished task again (pipeline.requeue_unfinished over the
# tasks service); returns how many were added.
Requeue = Callable[[Callable[[Sequence[str]], Awaitable[list[EnqueueResult]]]], Awaitable[int]]


@dataclass(frozen=True)
class EnqueueItem:
    """One task's outcome in a batch enqueue: a result, or why its id was refused."""

    task_id: str
    result: EnqueueResult | None
    invalid: str = ""


class QueueControl:
    def __init__(
        self,
        backend: QueueBackend,
        requeue: Requeue | None = None,
        state: QueueState | None = None,
    ) -> None:
        self.backend = backend
        self.requeue = requeue
        self.state = state
        self._next_sync = 0.0

    async def enqueue(self, task_id: str) -> EnqueueResult:
        validate_task_id(task_id)
        (result,) = await self.backend.enqueue_many([task_id])
        return result

    async def enqueue_many(self, task_ids: Sequence[str]) -> list[EnqueueItem]:
        if not task_ids:
            raise InvalidArgument("task_ids", "is required")
        if len(task_ids) > MAX_ENQUEUE_BATCH:
            raise InvalidArgument("task_ids", f"at most {MAX_ENQUEUE_BATCH} a call")
        valid: list[str] = []
        items: list[EnqueueItem] = []
        for task_id in task_ids:
            try:
                valid.append(validate_task_id(task_id))
                items.append(EnqueueItem(task_id, None))
            except InvalidTaskId as exc:
                items.append(EnqueueItem(task_id, None, invalid=str(exc)))
        results = iter(await self.backend.enqueue_many(valid) if valid else [])
        return [
            item if item.invalid else EnqueueItem(item.task_id, next(results)) for item in items
        ]

    async def status(self) -> QueueStatusView:
        view = await self.backend.status()
        if self.state is None:
            return view
        try:
            durable = await self.state.get()
        except QueueUnavailable as exc:
            # The jobs' counts still answer; the flag is the workers' copy.
            log.warning("queue.state_unavailable", error=str(exc))
            return view
        return dataclasses.replace(
            view, paused=durable.paused, completed=durable.completed, failed=durable.failed
        )

    async def pause(self) -> QueueStatusView:
        await self._set_paused(True)
        return await self.status()

    async def resume(self) -> QueueStatusView:
        await self._set_paused(False)
        return await self.status()

    async def _set_paused(self, paused: bool) -> None:
        if self.state is not None:
            await self.state.set_paused(paused)  # the durable flag first
        await self.backend.set_paused(paused)
        log.info("queue.paused" if paused else "queue.resumed", queue=self.backend.queue_name)

    async def list_workers(self) -> list[WorkerInfo]:
        return await self.backend.list_workers()

    async def sync_pause(self) -> None:
        """One check (every tick, at most once a second): the backend's copy of
        the pause flag follows the database's."""
        now = time.monotonic()
        if self.state is None or now < self._next_sync:
            return
        self._next_sync = now + PAUSE_SYNC_SECONDS
        durable = await self.state.get()
        if durable.paused != await self.backend.read_paused():
            log.info("queue.pause_restored", paused=durable.paused, queue=self.backend.queue_name)
            await self.backend.set_paused(durable.paused)

    async def recover(self) -> None:
        """One check (a background job runs it every tick): when the queue lost
        its data, enqueue every unfinished task again. The epoch is claimed
        first, so a flush during the requeue is seen on the next check."""
        if self.requeue is None or not await self.backend.claim_epoch():
            return
        log.warning("queue.data_lost", queue=self.backend.queue_name, backend=self.backend.kind)
        try:
            await self.requeue(self.backend.enqueue_many)
        except BaseException:
            # Not done: the next check starts it over (enqueue is idempotent).
            await self.backend.drop_epoch()
            raise
