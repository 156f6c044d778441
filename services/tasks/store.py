"""The task store's interface: tasks and their audit trail, one adapter per
engine (store_postgres.py: PostgreSQL in production; store_sqlite.py: the
embedded SQLite file). The store runs statements and maps rows; it decides
nothing. Which change to make, with which audit entry, is the service layer's
(service.py, dispatch.py): every write takes its `rows.Audit` from the caller.

Each write is one guarded UPDATE with its task_events row in the same
transaction, and returns the changed task, or None when the guard refused
(the caller reads the task and decides whether that is a no-op or an error).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from . import statements as st
from .errors import TaskNotFound
from .model import (
    Completion,
    Cursor,
    Deferral,
    EnqueueAck,
    EventType,
    Failure,
    ListQuery,
    ProgressReport,
    QueueState,
    Task,
    TaskEvent,
    TaskPage,
    TaskStats,
    TaskStatus,
    TaskView,
)
from .rows import Audit, LeaseRow, Row, event_from_row, task_from_row, utc
from .settings import database_url

Clock = Callable[[], datetime]
OnChange = Callable[[str], None]
Builder = Callable[[], Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskStore(abc.ABC):
    """Tasks and their audit trail. One implementation per engine."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    # --- engine specifics ---------------------------------------------------

    @abc.abstractmethod
    async def _fetch(self, key: Any, build: Builder, params: dict[str, Any]) -> Sequence[Row]:
        """Run the statement `build()` makes (built once per key) and return its rows."""

    @abc.abstractmethod
    async def insert_task(self, values: dict[str, Any], audit: Audit) -> Task | None:
        """Insert a task row (rows.new_task_row) and its `created` event; None
        when its request_id exists already."""

    @abc.abstractmethod
    async def insert_tasks(
        self, values: list[dict[str, Any]], audit: Audit
    ) -> list[tuple[Task, bool] | None]:
        """Insert task rows (rows.new_task_row, one owner) and their `created`
        events in one transaction. Per row, in order: (the new task, True); or,
        for a request_id known already, (the task it names, False); or None when
        neither could be read (a concurrent insert: ask again). When any known
        request_id belongs to another owner, nothing is inserted."""

    @abc.abstractmethod
    async def _apply(self, change: st.Change) -> Task | None:
        """Run a guarded change with its audit event; None when the guard refused."""

    @abc.abstractmethod
    async def _apply_leases(
        self, shape_name: str, items: list[dict[str, Any]], audit: Audit
    ) -> list[LeaseRow]:
        """Run a batch change (statements.LEASE_SHAPES) over `items` (id, attempt,
        event_type, message and the shape's columns); one LeaseRow per item, in order."""

    @abc.abstractmethod
    async def get_tasks(self, task_ids: list[str], full: bool) -> list[Task]:
        """The tasks among `task_ids` that exist (any order), one statement."""

    @abc.abstractmethod
    async def _upsert_queue_state(self, params: dict[str, Any]) -> None:
        """Insert or update one queue_state row."""

    @abc.abstractmethod
    async def _processing_times(
        self, has: tuple[bool, bool], params: dict[str, Any]
    ) -> tuple[float, float]:
        """Average and p95 seconds from started_at to finished_at of processed
        tasks; `has` and `params` give the creation bounds as stats() binds them."""

    @abc.abstractmethod
    async def version(self) -> str:
        """The database server's version (the health probe)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def _fetch_one(self, key: Any, build: Builder, params: dict[str, Any]) -> Row | None:
        rows = await self._fetch(key, build, params)
        return rows[0] if rows else None

    # --- guarded writes (None: the guard refused) ---------------------------

    async def fail(self, task_id: str, error_message: str, audit: Audit) -> Task | None:
        return await self._apply(_change("fail", task_id, audit, error_message=error_message))

    async def cancel(self, task_id: str, message: str, audit: Audit) -> Task | None:
        return await self._apply(_change("cancel", task_id, audit, error_message=message))

    # --- batch writes of the worker path (one statement per batch) ----------

    async def start_many(self, task_ids: list[str], audit: Audit) -> list[LeaseRow]:
        """ACTIVE with a new attempt each; a finished task is not started."""
        items = [_item(task_id, 0, audit.type, audit.message) for task_id in task_ids]
        return await self._apply_leases("start", items, audit)

    async def complete_many(self, completions: list[Completion], audit: Audit) -> list[LeaseRow]:
        """Each ACTIVE task whose current attempt it is ends as its completion says."""
        items = []
        for c in completions:
            event = EventType.COMPLETED if c.status is TaskStatus.COMPLETED else EventType.FAILED
            message = c.error_message or "every enabled check passed"
            items.append(
                _item(c.task_id, c.attempt, event, message)
                | {
                    "to_status": c.status.value,
                    "error_message": c.error_message,
                    "check_results": [r.to_dict() for r in c.summary.checks],
                    "verdict": c.summary.verdict,
                    "tcb_status": c.summary.tcb_status,
                    "s3_bucket": c.summary.s3_bucket,
                    "s3_key": c.summary.s3_key,
                    "s3_filename": c.summary.s3_filename,
                }
            )
        return await self._apply_leases("complete", items, audit)

    async def fail_many(self, failures: list[Failure], audit: Audit) -> list[LeaseRow]:
        items = [
            _item(f.task_id, f.attempt, EventType.FAILED, f.error_message)
            | {"error_message": f.error_message}
            for f in failures
        ]
        return await self._apply_leases("fail", items, audit)

    async def defer_many(self, deferrals: list[Deferral], audit: Audit) -> list[LeaseRow]:
        items = [
            _item(d.task_id, d.attempt, EventType.WAITING, d.reason)
            | {"wait_reason": d.reason, "next_attempt_at": d.retry_at}
            for d in deferrals
        ]
        return await self._apply_leases("defer", items, audit)

    async def write_progress(self, reports: list[ProgressReport], audit: Audit) -> list[LeaseRow]:
        """The progress column only (no audit row: progress is not a state change)."""
        items = [
            _item(p.task_id, p.attempt, EventType.PROGRESS, p.message) | {"progress": p.progress}
            for p in reports
        ]
        return await self._apply_leases("progress", items, audit)

    async def mark_enqueued_many(self, acks: list[EnqueueAck], audit: Audit) -> list[LeaseRow]:
        """Record the queue's acknowledgements (statements.LEASE_SHAPES["enqueue"])."""
        items = [
            _item(a.task_id, 0, EventType.QUEUED, "") | {"job_id": a.job_id, "requeue": a.requeue}
            for a in acks
        ]
        return await self._apply_leases("enqueue", items, audit)

    # --- the queue's durable state ---------------------------------------------

    async def get_queue_state(self, queue_name: str) -> QueueState:
        row = await self._fetch_one(
            "queue_state", st.select_queue_state, {"queue_name": queue_name}
        )
        counts = await self._fetch(
            ("count_by_status", (False, False)), lambda: st.count_by_status(False, False), {}
        )
        by_status = {row_["status"]: int(row_["count"]) for row_ in counts}
        return QueueState(
            queue_name=queue_name,
            paused=bool(row["paused"]) if row else False,
            changed_at=utc(row["changed_at"]) if row else None,
            changed_by=row["changed_by"] if row else "",
            completed=by_status.get(TaskStatus.COMPLETED.value, 0),
            failed=by_status.get(TaskStatus.FAILED.value, 0),
        )

    async def set_queue_paused(self, queue_name: str, paused: bool, changed_by: str) -> QueueState:
        await self._upsert_queue_state(
            {
                "queue_name": queue_name,
                "paused": paused,
                "changed_at": self.clock(),
                "changed_by": changed_by,
            }
        )
        return await self.get_queue_state(queue_name)

    # --- reads ---------------------------------------------------------------

    async def get_task(self, task_id: str, view: TaskView = TaskView.BASIC) -> Task:
        full = view is TaskView.FULL
        row = await self._fetch_one(
            ("task", full), lambda: st.select_task(full), {"task_id": task_id}
        )
        if row is None:
            raise TaskNotFound(task_id)
        return task_from_row(row, with_evidence=full)

    async def find_by_request_id(self, request_id: str) -> Task | None:
        row = await self._fetch_one(
            "by_request_id", st.select_by_request_id, {"request_id": request_id}
        )
        return task_from_row(row) if row is not None else None

    async def get_with_last_event(self, task_id: str) -> tuple[Task, int]:
        """The task and its latest event id, read in one statement (one snapshot)."""
        row = await self._fetch_one(
            "task_and_last_event", st.select_task_and_last_event, {"task_id": task_id}
        )
        if row is None:
            raise TaskNotFound(task_id)
        return task_from_row(row), int(row["last_event_id"])

    async def list_tasks(self, query: ListQuery) -> TaskPage:
        """A page newest first, after the cursor; keyset on (created_at, id)."""
        shape = st.ListShape.of(query)
        rows = await self._fetch(("list", shape), shape.build, shape.params(query))
        page = [task_from_row(row) for row in rows[: query.page_size]]
        more = len(rows) > query.page_size
        cursor = Cursor(page[-1].created_at, page[-1].id) if more and page else None
        return TaskPage(page, cursor)

    async def list_events(self, task_id: str, after_id: int = 0) -> list[TaskEvent]:
        rows = await self._fetch(
            "events", st.select_events, {"task_id": task_id, "after_id": after_id}
        )
        if not rows and after_id == 0:
            await self.get_task(task_id)  # NotFound for an unknown task
        return [event_from_row(row) for row in rows]

    async def stats(
        self, created_after: datetime | None, created_before: datetime | None
    ) -> TaskStats:
        has = (created_after is not None, created_before is not None)
        bounds = {"created_after": created_after, "created_before": created_before}
        params = {k: v for k, v in bounds.items() if v is not None}
        rows = await self._fetch(("count_by_status", has), lambda: st.count_by_status(*has), params)
        by_status = {TaskStatus(row["status"]): int(row["count"]) for row in rows}
        average, p95 = await self._processing_times(has, params)
        return TaskStats(
            total=sum(by_status.values()),
            by_status=by_status,
            average_processing_seconds=average,
            p95_processing_seconds=p95,
        )

    async def reconcile_candidates(
        self, pending_before: datetime, stale_before: datetime, limit: int
    ) -> list[tuple[str, TaskStatus]]:
        """Tasks the queue may not hold, with their status: PENDING ones never
        acknowledged in time, and QUEUED, ACTIVE or WAITING ones untouched for the
        stale timeout (their queue entry may be lost, for example by a Redis
        restart without persistence)."""
        rows = await self._fetch(
            "reconcile",
            st.reconcile_candidates,
            {"pending_before": pending_before, "stale_before": stale_before, "limit": limit},
        )
        return [(str(row["id"]), TaskStatus(row["status"])) for row in rows]


def _item(task_id: str, attempt: int, event: EventType, message: str) -> dict[str, Any]:
    return {"id": task_id, "attempt": attempt, "event_type": event.value, "message": message}


def _change(shape: str, task_id: str, audit: Audit, **params: Any) -> st.Change:
    return st.Change(shape, task_id, {"task_id": task_id, **audit.params(), **params})


def open_store(
    url: str, *, pool_size: int = 10, clock: Clock = utc_now, on_change: OnChange | None = None
) -> TaskStore:
    """The store for a database URL: PostgreSQL or SQLite."""
    # Imported here: each adapter builds on TaskStore above.
    from .store_postgres import PostgresTaskStore
    from .store_sqlite import SqliteTaskStore

    url = database_url(url, "async")
    if url.startswith("sqlite"):
        return SqliteTaskStore(url, clock=clock, on_change=on_change)
    return PostgresTaskStore(url, pool_size=pool_size, clock=clock)
