"""The tasks application: validated domain calls over the store, the
dispatcher and the change feed. No grpc here; server.py maps protos to these."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from shared import errors
from shared.context import bind_task_id
from shared.errors import InvalidArgument
from shared.log import get_logger
from shared.principal import current_identity

from . import audit, lifecycle, rows, validation
from .dispatch import Dispatcher
from .errors import TaskNotFound
from .feed import ChangeFeed
from .lifecycle import Transition
from .model import (
    EventType,
    ListFilter,
    NewTask,
    Task,
    TaskEvent,
    TaskPage,
    TaskStats,
    TaskStatus,
    TaskView,
)
from .paging import next_page_token, page_query
from .progress import ProgressBoard
from .store import TaskStore

log = get_logger(__name__)


class TaskApp:
    def __init__(
        self,
        store: TaskStore,
        dispatcher: Dispatcher,
        feed: ChangeFeed,
        progress: ProgressBoard | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.feed = feed
        # Progress reported to this process and not written yet (worker path).
        self.progress = progress
        # Called once per task that this process moved to a final status (metrics).
        self.on_finished: Callable[[Task], None] | None = None

    async def _visible(self, task_id: str) -> None:
        """NotFound unless the caller may see the task: a submitter sees only its
        owner's tasks, and someone else's id looks like no task at all."""
        identity = current_identity()
        if identity.sees_all_tasks:
            return
        task = await self.store.get_task(task_id)
        if not identity.can_see(task.owner):
            raise TaskNotFound(task_id)

    async def create(self, new: NewTask) -> Task:
        task, _ = await self.create_once(new)
        return task

    async def create_once(self, new: NewTask) -> tuple[Task, bool]:
        """Create (or, for a known request_id, find) the task; returns it and
        whether this call created it."""
        identity = current_identity()
        new = dataclasses.replace(new, owner=identity.owner)
        task, created = await self._insert(new)
        if not created and task.owner != new.owner:
            # Another owner's request_id: neither its task nor a new one.
            raise errors.AlreadyExists("request_id is already used by another client")
        bind_task_id(task.id)
        if created:
            log.info("task.created", app_id=task.app_id, type=task.app_config_type.value)
            # Committed first, then handed to the queue: if this process dies now,
            # the reconciler finds the PENDING task.
            self.dispatcher.submit(task.id, resend=False)
        else:
            log.info("task.create_replayed", request_id_key=new.request_id)
        return task, created

    async def create_many(self, news: list[NewTask]) -> list[Task]:
        """Create (or, per known request_id, find) a batch of tasks, in one
        statement; one task per item, in order. A request_id of another owner
        fails the whole batch, and nothing is created."""
        owner = current_identity().owner
        news = [dataclasses.replace(new, owner=owner) for new in news]
        now = self.store.clock()
        found = await self.store.insert_tasks(
            [rows.new_task_row(new, now) for new in news], self._audit(EventType.CREATED, "")
        )
        for index, item in enumerate(found):
            if item is not None and not item[1] and item[0].owner != owner:
                raise errors.AlreadyExists(
                    f"requests[{index}].request_id is already used by another client"
                )
        tasks: list[Task] = []
        created = 0
        for new, item in zip(news, found, strict=True):
            if item is None:
                # Not read in the batch's snapshot (a concurrent create, or the
                # same request_id twice in the batch): the one-task path decides.
                task, fresh = await self.create_once(new)
                tasks.append(task)
                continue
            task, fresh = item
            tasks.append(task)
            if fresh:
                created += 1
                self.dispatcher.submit(task.id, resend=False)
        log.info("task.batch_created", created=created, replayed=len(news) - created)
        return tasks

    async def get(self, task_id: str, view: TaskView) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        task = await self.store.get_task(task_id, view)
        if not current_identity().can_see(task.owner):
            raise TaskNotFound(task_id)
        held = self.progress.progress(task_id, task.attempts) if self.progress else None
        if held is not None and held > task.progress and task.status is TaskStatus.ACTIVE:
            # Reported, held in memory, not written yet (progress.py).
            return dataclasses.replace(task, progress=held)
        return task

    async def list_tasks(
        self, list_filter: ListFilter, page_size: int, page_token: str
    ) -> tuple[TaskPage, str]:
        identity = current_identity()
        if not identity.sees_all_tasks:
            if not identity.owner:
                raise errors.PermissionDenied("this key has no owner to list tasks for")
            list_filter = dataclasses.replace(list_filter, owner=identity.owner)
        page = await self.store.list_tasks(page_query(list_filter, page_size, page_token))
        return page, next_page_token(page, list_filter)

    async def cancel(self, task_id: str, reason: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        await self._visible(task_id)
        reason = validation.validate_reason(reason)
        message = f"cancelled: {reason}" if reason else "cancelled by a client"
        task = await self._change_or_refuse(
            lifecycle.CANCEL,
            task_id,
            await self.store.cancel(task_id, message, self._audit(EventType.CANCELLED, message)),
        )
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
        await self._visible(task_id)
        return await self.store.list_events(task_id)

    async def watch(
        self, task_id: str, after_event_id: int = 0
    ) -> AsyncIterator[tuple[Task, TaskEvent | None, int]]:
        """The task now, then (task, event) per change until it is finished, each
        with the id of the latest audit event it reflects. With `after_event_id`
        (a resumed stream) the events after that one are replayed first."""
        task_id = validation.validate_task_id(task_id)
        bind_task_id(task_id)
        if after_event_id < 0:
            raise InvalidArgument("after_event_id", "must not be negative")
        # Subscribe before reading: a change committed after the read wakes us.
        async with self.feed.subscribe(task_id) as subscription:
            task, last_event_id = await self.store.get_with_last_event(task_id)
            if not current_identity().can_see(task.owner):
                raise TaskNotFound(task_id)
            replay = 0 < after_event_id < last_event_id
            yield task, None, (after_event_id if replay else last_event_id)
            if replay:
                last_event_id = after_event_id
            elif task.status.finished:
                return
            sent_progress = task.progress
            while True:
                if not replay:
                    await subscription.wait()
                replay = False
                events = await self.store.list_events(task_id, after_id=last_event_id)
                if not events:
                    held = self.progress.progress(task_id) if self.progress else None
                    if held is not None and held > sent_progress:
                        # Progress held in memory: the task as it is, with that progress.
                        sent_progress = held
                        current = await self.store.get_task(task_id)
                        yield (
                            dataclasses.replace(current, progress=max(held, current.progress)),
                            None,
                            last_event_id,
                        )
                    continue
                # Read after the events: at least as new as the last of them.
                task = await self.store.get_task(task_id)
                sent_progress = task.progress
                for event in events:
                    last_event_id = event.id
                    yield task, event, event.id
                    # A finished task never changes again: its last event ends the stream.
                    if event.to_status.finished:
                        return

    # --- the decisions around the store ---------------------------------------

    def _audit(self, event: EventType, message: str) -> rows.Audit:
        return audit.entry(self.store.clock, event, message)

    async def _insert(self, new: NewTask) -> tuple[Task, bool]:
        """Store a PENDING task; with a known request_id, the first task instead.
        Returns the task and whether this call created it."""
        values = rows.new_task_row(new, self.store.clock())
        entry = self._audit(EventType.CREATED, "")
        # A conflicting row the read cannot see (yet): try again, a few times.
        for _ in range(3):
            task = await self.store.insert_task(values, entry)
            if task is not None:
                return task, True
            assert new.request_id is not None
            existing = await self.store.find_by_request_id(new.request_id)
            if existing is not None:
                return existing, False
        raise RuntimeError(f"request_id {new.request_id!r} conflicts but no task carries it")

    async def _change_or_refuse(
        self,
        transition: Transition,
        task_id: str,
        changed: Task | None,
        view: TaskView = TaskView.BASIC,
    ) -> Task:
        """The changed task, or, when the guard refused, the no-op result or the error."""
        if changed is not None:
            if self.on_finished is not None and changed.status.finished:
                self.on_finished(changed)
            return changed
        return transition.refuse_or_noop(await self.store.get_task(task_id, view))
