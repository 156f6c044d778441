"""The tasks application: validated domain calls over the store, the
dispatcher and the change feed. No grpc here; server.py maps protos to these."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from shared.context import bind_task_id
from shared.log import get_logger

from . import validation
from .dispatch import Dispatcher
from .feed import ChangeFeed
from .model import (
    ListFilter,
    ListQuery,
    NewTask,
    ReportSummary,
    Task,
    TaskEvent,
    TaskPage,
    TaskStats,
    TaskView,
)
from .paging import decode_page_token, encode_page_token
from .store import TaskStore

log = get_logger(__name__)


class TaskApp:
    def __init__(self, store: TaskStore, dispatcher: Dispatcher, feed: ChangeFeed) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.feed = feed

    async def create(self, new: NewTask) -> Task:
        task, created = await self.store.create_task(new)
        bind_task_id(task.id)
        if created:
            log.info("task.created", app_id=task.app_id, type=task.app_config_type.value)
            # Committed first, then handed to the queue: if this process dies now,
            # the reconciler finds the PENDING task.
            self.dispatcher.submit(task.id)
        else:
            log.info("task.create_replayed", request_id_key=new.request_id)
        return task

    async def get(self, task_id: str, view: TaskView) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        return await self.store.get_task(task_id, view)

    async def list_tasks(
        self, list_filter: ListFilter, page_size: int, page_token: str
    ) -> tuple[TaskPage, str]:
        query = ListQuery(
            filter=list_filter,
            page_size=validation.validate_page_size(page_size),
            after=decode_page_token(page_token, list_filter),
        )
        page = await self.store.list_tasks(query)
        token = encode_page_token(page.next_cursor, list_filter) if page.next_cursor else ""
        return page, token

    async def cancel(self, task_id: str, reason: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        task = await self.store.cancel(task_id, validation.validate_reason(reason))
        log.info("task.cancel", status=task.status.value)
        return task

    async def stats(
        self, created_after: datetime | None, created_before: datetime | None
    ) -> TaskStats:
        after, before = validation.validate_time_window(created_after, created_before)
        return await self.store.stats(after, before)

    async def events(self, task_id: str) -> list[TaskEvent]:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        return await self.store.list_events(task_id)

    async def watch(self, task_id: str) -> AsyncIterator[tuple[Task, TaskEvent | None]]:
        """The task now, then (task, event) per change until it is finished."""
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        # Subscribe before reading: a change committed after the read wakes us.
        async with self.feed.subscribe(task_id) as subscription:
            task, last_event_id = await self.store.get_with_last_event(task_id)
            yield task, None
            if task.status.finished:
                return
            while True:
                await subscription.wait()
                events = await self.store.list_events(task_id, after_id=last_event_id)
                if not events:
                    continue
                # Read after the events: at least as new as the last of them.
                task = await self.store.get_task(task_id)
                for event in events:
                    last_event_id = event.id
                    yield task, event
                    # A finished task never changes again: its last event ends the stream.
                    if event.to_status.finished:
                        return

    # --- worker lifecycle ---------------------------------------------------

    async def start(self, task_id: str, worker_id: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        task = await self.store.start(task_id, validation.validate_worker_id(worker_id))
        log.info("task.started", attempt=task.attempts, worker_id=worker_id)
        return task

    async def update_progress(self, task_id: str, progress: int, message: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        return await self.store.update_progress(
            task_id,
            validation.validate_progress(progress),
            validation.validate_progress_message(message),
        )

    async def complete(self, task_id: str, summary: ReportSummary | None) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        task = await self.store.complete(task_id, validation.validate_summary(summary))
        log.info("task.finished", status=task.status.value, verdict=task.verdict)
        return task

    async def fail(self, task_id: str, error_message: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        task = await self.store.fail(task_id, validation.validate_error_message(error_message))
        log.info("task.finished", status=task.status.value, error=task.error_message[:200])
        return task
