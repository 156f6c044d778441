"""Scheduled re-verification: every `interval` seconds, one pass creates a task
for each app that is due (apps.next_run), in batches.

One scheduler at a time: the pass runs under the store's scheduler lock (a
PostgreSQL advisory lock held by the pass's transaction), and the apps' latest
task ids are written on that transaction. A due app's task is created with the
request id `apps.scheduled_request_id`, so a pass that died half-way, or a
trigger racing a pass, never yields a second task for the same due run.

Its tasks are created as the scheduler's own service identity
(`SCHEDULER_IDENTITY`, owner `scheduler`), whether a pass or an operator's
trigger made them: a key whose owner is `scheduler` lists them with
tasks.submit, and no submitter's own list shows them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from shared import metrics
from shared.errors import AlreadyExists, FailedPrecondition
from shared.log import get_logger
from shared.principal import KIND_SERVICE, SCOPES, Identity, bind_identity, identity_var

from . import apps as domain
from .apps import App
from .apps_store import SCHEDULER_LOCK_KEY, AppStore
from .model import NewTask, Task

log = get_logger(__name__)

CreateTask = Callable[[NewTask], Awaitable[tuple[Task, bool]]]
Clock = Callable[[], datetime]

# Who creates the scheduler's tasks: their owner and the principal in the logs.
SCHEDULER_IDENTITY = Identity(
    KIND_SERVICE, "tasks-scheduler", owner=domain.SCHEDULER, scopes=frozenset(SCOPES)
)
# The scheduler's tasks created before it had an owner (owner "").
_UNOWNED_SCHEDULER = Identity(KIND_SERVICE, "tasks-scheduler", scopes=frozenset(SCOPES))


@dataclass(frozen=True)
class SchedulePass:
    """What one pass did."""

    ran: bool  # False: another replica holds the lock
    due: int = 0
    created: int = 0
    # Due apps whose task already existed (a pass that died before recording it).
    recovered: int = 0
    failed: int = 0


class Scheduler:
    def __init__(
        self,
        store: AppStore,
        create: CreateTask,
        clock: Clock,
        *,
        interval_seconds: float = 30.0,
        batch_size: int = 500,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.create = create
        self.clock = clock
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self.concurrency = concurrency
        # Passes this replica ran, and skipped because another replica held the lock.
        self.passes_run = 0
        self.passes_skipped = 0
        # Tasks created, and found already created (by a pass that died, or one
        # that overlapped: with the lock working, only the former).
        self.created_total = 0
        self.recovered_total = 0

    async def run(self) -> None:
        """Pass after pass until cancelled (a failed pass is logged and retried)."""
        while True:
            try:
                result = await self.run_once()
                if result.created or result.failed:
                    log.info("scheduler.pass", **result.__dict__)
            except Exception:
                log.exception("scheduler.pass_failed")
            await asyncio.sleep(self.interval_seconds)

    async def run_once(self) -> SchedulePass:
        async with self.store.exclusive(SCHEDULER_LOCK_KEY) as lease:
            if not lease.acquired:
                self.passes_skipped += 1
                return SchedulePass(ran=False)
            self.passes_run += 1
            now = self.clock()
            due = [app for app in await self.store.schedulable() if domain.is_due(app, now)]
            created = recovered = failed = 0
            gate = asyncio.Semaphore(self.concurrency)

            async def one(app: App) -> tuple[str, Task, bool] | None:
                async with gate:
                    try:
                        task, new = await self._create(app)
                    except Exception as exc:  # one app's fault never stops the others
                        log.warning("scheduler.create_failed", app_id=app.id, error=str(exc))
                        return None
                    return app.id, task, new

            for start in range(0, len(due), self.batch_size):
                batch = due[start : start + self.batch_size]
                results = await asyncio.gather(*(one(app) for app in batch))
                pairs = []
                for result in results:
                    if result is None:
                        failed += 1
                        continue
                    app_id, task, new = result
                    pairs.append((app_id, task.id))
                    if new:
                        created += 1
                    else:
                        recovered += 1
                await self.store.record_latest(lease.conn, pairs, now)
            metrics.scheduled(created)
            self.created_total += created
            self.recovered_total += recovered
            return SchedulePass(True, len(due), created, recovered, failed)

    async def trigger(self, app: App) -> Task:
        """A task for the app now, due or not; refused while its latest task runs.
        Same request id as the scheduler's: a trigger racing a pass yields one task."""
        if app.latest is not None and not app.latest.status.finished:
            raise FailedPrecondition(
                f"app {app.id!r}: its latest task {app.latest.id} is still "
                f"{app.latest.status.value}; trigger again once it finished"
            )
        task, _ = await self._create(app)
        await self.store.record_latest(None, [(app.id, task.id)], self.clock())
        return task

    async def _create(self, app: App) -> tuple[Task, bool]:
        """The app's task for its current due run, created as the scheduler."""
        new = domain.task_for(app, domain.scheduled_request_id(app))
        try:
            return await self._create_as(SCHEDULER_IDENTITY, new)
        except AlreadyExists:
            # The due run's task exists from before the scheduler had an owner
            # (a pass that died before recording it): that task, not a second.
            return await self._create_as(_UNOWNED_SCHEDULER, new)

    async def _create_as(self, identity: Identity, new: NewTask) -> tuple[Task, bool]:
        token = bind_identity(identity)
        try:
            return await self.create(new)
        finally:
            identity_var.reset(token)
