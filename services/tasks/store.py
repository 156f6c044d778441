"""The task store: tasks and their audit trail on PostgreSQL (production) or a
SQLite file (embedded). Statements are SQLAlchemy 2 Core constructs with
named bind parameters, built once per shape.

Every change is one guarded UPDATE (`... WHERE status IN (allowed)`) plus its
task_events row in the same transaction:
- PostgreSQL: both in ONE statement (a data-modifying CTE) in autocommit, so a
  transition is one round trip; the task_events trigger NOTIFYs watchers in
  that transaction. The statements are compiled once by SQLAlchemy's psycopg
  dialect and run on a psycopg 3 async connection pool: the hot path skips the
  ORM-free-but-still-costly engine layer (about 0.6 ms of CPU per call here).
- SQLite: read the old status, UPDATE ... RETURNING and INSERT the event in
  one transaction on the store's single aiosqlite connection (through the
  SQLAlchemy async engine); watchers are woken in-process after the commit.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row
from psycopg.types.json import Json, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.context import current_request_id
from shared.errors import Unavailable

from . import lifecycle
from .errors import TaskNotFound
from .lifecycle import Transition
from .model import (
    AppConfigType,
    CheckResult,
    Cursor,
    EventType,
    ListQuery,
    NewTask,
    ReportSummary,
    Task,
    TaskEvent,
    TaskPage,
    TaskStats,
    TaskStatus,
    TaskView,
    VerificationFlags,
)
from .tables import BASIC_COLUMNS, TaskId, UtcDateTime, task_events, tasks

Clock = Callable[[], datetime]
OnChange = Callable[[str], None]
Row = Mapping[Any, Any]
Builder = Callable[[], Any]

_FULL_COLUMNS: list[sa.ColumnElement[Any]] = [*BASIC_COLUMNS, tasks.c.evidence]
_EVENT_COLUMNS = [
    "task_id",
    "type",
    "from_status",
    "to_status",
    "progress",
    "message",
    "request_id",
    "created_at",
]
_JSON = sa.JSON(none_as_null=True)
_P = sa.bindparam


def utc_now() -> datetime:
    return datetime.now(UTC)


def async_url(url: str) -> str:
    """The SQLAlchemy URL for the async drivers (psycopg 3 async, aiosqlite)."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The URL psycopg itself takes."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def open_store(
    url: str, *, pool_size: int = 10, clock: Clock = utc_now, on_change: OnChange | None = None
) -> TaskStore:
    """The store for a database URL: PostgreSQL or SQLite."""
    url = async_url(url)
    if url.startswith("sqlite"):
        return SqliteTaskStore(url, clock=clock, on_change=on_change)
    return PostgresTaskStore(url, pool_size=pool_size, clock=clock)


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None and value.tzinfo else value


def _task_from_row(row: Row, with_evidence: bool = False) -> Task:
    checks = row["check_results"] or []
    return Task(
        id=str(row["id"]),
        job_name=row["job_name"],
        queue_job_id=row["queue_job_id"],
        request_id=row["request_id"],
        app_id=row["app_id"],
        app_name=row["app_name"],
        app_config_type=AppConfigType(row["app_config_type"]),
        contract_address=row["contract_address"],
        model_or_domain=row["model_or_domain"],
        app_metadata=row["app_metadata"] or {},
        verification_flags=VerificationFlags.from_dict(row["verification_flags"] or {}),
        status=TaskStatus(row["status"]),
        progress=row["progress"],
        error_message=row["error_message"],
        check_results=tuple(CheckResult.from_dict(c) for c in checks),
        verdict=row["verdict"],
        tcb_status=row["tcb_status"],
        s3_bucket=row["s3_bucket"],
        s3_key=row["s3_key"],
        s3_filename=row["s3_filename"],
        expected_compose_hash=row["expected_compose_hash"],
        evaluation_time=_utc(row["evaluation_time"]),
        attempts=row["attempts"],
        created_at=_utc(row["created_at"]) or row["created_at"],
        updated_at=_utc(row["updated_at"]) or row["updated_at"],
        started_at=_utc(row["started_at"]),
        finished_at=_utc(row["finished_at"]),
        has_evidence=bool(row["has_evidence"]),
        evidence=(row["evidence"] if with_evidence else None),
    )


def _event_from_row(row: Row) -> TaskEvent:
    return TaskEvent(
        id=int(row["id"]),
        task_id=str(row["task_id"]),
        type=EventType(row["type"]),
        from_status=TaskStatus(row["from_status"]) if row["from_status"] else None,
        to_status=TaskStatus(row["to_status"]),
        progress=row["progress"],
        message=row["message"],
        request_id=row["request_id"],
        created_at=_utc(row["created_at"]) or row["created_at"],
    )


def _const(value: str) -> sa.ColumnElement[str]:
    """A status or type value inlined as a SQL literal: a fixed vocabulary, never client text."""
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a vocabulary value: {value!r}")
    return sa.literal_column(f"'{value}'", sa.String())


def _status_in(statuses: frozenset[TaskStatus]) -> sa.ColumnElement[bool]:
    return tasks.c.status.in_([_const(status.value) for status in sorted(statuses)])


# --- statements (built once per shape; parameters by name) -----------------------------


def _select_task(full: bool) -> sa.Select[Any]:
    columns = _FULL_COLUMNS if full else BASIC_COLUMNS
    return sa.select(*columns).where(tasks.c.id == _P("task_id", type_=TaskId))


def _select_task_and_last_event() -> sa.Select[Any]:
    last = (
        sa.select(sa.func.coalesce(sa.func.max(task_events.c.id), 0))
        .where(task_events.c.task_id == tasks.c.id)
        .scalar_subquery()
        .label("last_event_id")
    )
    return sa.select(*BASIC_COLUMNS, last).where(tasks.c.id == _P("task_id", type_=TaskId))


def _select_by_request_id() -> sa.Select[Any]:
    return sa.select(*BASIC_COLUMNS).where(
        tasks.c.request_id == _P("request_id", type_=sa.String())
    )


def _select_events() -> sa.Select[Any]:
    return (
        sa.select(task_events)
        .where(
            task_events.c.task_id == _P("task_id", type_=TaskId),
            task_events.c.id > _P("after_id", type_=sa.BigInteger()),
        )
        .order_by(task_events.c.id)
    )


def _window_clauses(has_after: bool, has_before: bool) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if has_after:
        clauses.append(tasks.c.created_at >= _P("created_after", type_=UtcDateTime()))
    if has_before:
        clauses.append(tasks.c.created_at < _P("created_before", type_=UtcDateTime()))
    return clauses


@dataclass(frozen=True)
class _ListShape:
    """Which filters a ListTasks query has: one compiled statement per shape."""

    status: bool
    app_id: bool
    app_config_type: bool
    created_after: bool
    created_before: bool
    cursor: bool

    @classmethod
    def of(cls, query: ListQuery) -> _ListShape:
        f = query.filter
        return cls(
            f.status is not None,
            bool(f.app_id),
            f.app_config_type is not None,
            f.created_after is not None,
            f.created_before is not None,
            query.after is not None,
        )

    def params(self, query: ListQuery) -> dict[str, Any]:
        f = query.filter
        params: dict[str, Any] = {"limit": query.page_size + 1}
        if f.status is not None:
            params["status"] = f.status.value
        if f.app_id:
            params["app_id"] = f.app_id
        if f.app_config_type is not None:
            params["app_config_type"] = f.app_config_type.value
        if f.created_after is not None:
            params["created_after"] = f.created_after
        if f.created_before is not None:
            params["created_before"] = f.created_before
        if query.after is not None:
            params["cursor_created_at"] = query.after.created_at
            params["cursor_id"] = query.after.id
        return params

    def build(self) -> sa.Select[Any]:
        clauses = _window_clauses(self.created_after, self.created_before)
        if self.status:
            clauses.append(tasks.c.status == _P("status", type_=sa.String()))
        if self.app_id:
            clauses.append(tasks.c.app_id == _P("app_id", type_=sa.String()))
        if self.app_config_type:
            clauses.append(tasks.c.app_config_type == _P("app_config_type", type_=sa.String()))
        if self.cursor:
            # Row comparison: the index on (filter, created_at, id) seeks straight to it.
            clauses.append(
                sa.tuple_(tasks.c.created_at, tasks.c.id)
                < sa.tuple_(
                    _P("cursor_created_at", type_=UtcDateTime()), _P("cursor_id", type_=TaskId)
                )
            )
        return (
            sa.select(*BASIC_COLUMNS)
            .where(*clauses)
            .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
            .limit(_P("limit", type_=sa.Integer()))
        )


def _count_by_status(has_after: bool, has_before: bool) -> sa.Select[Any]:
    return (
        sa.select(tasks.c.status, sa.func.count().label("count"))
        .where(*_window_clauses(has_after, has_before))
        .group_by(tasks.c.status)
    )


def _processed(has_after: bool, has_before: bool) -> list[sa.ColumnElement[bool]]:
    return [
        *_window_clauses(has_after, has_before),
        _status_in(frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})),
        tasks.c.started_at.is_not(None),
        tasks.c.finished_at.is_not(None),
    ]


def _reconcile_candidates() -> sa.Select[Any]:
    stale_before = _P("stale_before", type_=UtcDateTime())
    return (
        sa.select(tasks.c.id)
        .where(
            sa.or_(
                sa.and_(
                    tasks.c.status == _const(TaskStatus.PENDING.value),
                    tasks.c.created_at < _P("pending_before", type_=UtcDateTime()),
                ),
                sa.and_(
                    _status_in(frozenset({TaskStatus.QUEUED, TaskStatus.ACTIVE})),
                    tasks.c.updated_at < stale_before,
                    sa.or_(tasks.c.enqueued_at.is_(None), tasks.c.enqueued_at < stale_before),
                ),
            )
        )
        .order_by(tasks.c.created_at)
        .limit(_P("limit", type_=sa.Integer()))
    )


def _touch_enqueued() -> sa.Update:
    return (
        sa.update(tasks)
        .where(
            tasks.c.id == _P("task_id", type_=TaskId),
            _status_in(lifecycle.REQUEUE.allowed_from),
        )
        .values(enqueued_at=_P("now", type_=UtcDateTime()))
        .returning(*BASIC_COLUMNS)
    )


_TASK_INSERT_COLUMNS = [
    c.name for c in tasks.c if c.name not in ("started_at", "finished_at", "enqueued_at")
]


@dataclass(frozen=True)
class _Shape:
    """One kind of guarded change: what it sets and what it requires."""

    transition: Transition
    assignments: Callable[[], dict[str, Any]]
    guards: Callable[[], list[sa.ColumnElement[bool]]] = lambda: []
    with_evidence: bool = False


def _now() -> sa.BindParameter[datetime]:
    return _P("now", type_=UtcDateTime())


_SHAPES: dict[str, _Shape] = {
    "start": _Shape(
        lifecycle.START,
        lambda: {
            "status": _const(TaskStatus.ACTIVE.value),
            "attempts": tasks.c.attempts + 1,
            "started_at": _now(),
            "updated_at": _now(),
        },
        with_evidence=True,
    ),
    "progress": _Shape(
        lifecycle.PROGRESS,
        lambda: {"progress": _P("progress", type_=sa.SmallInteger()), "updated_at": _now()},
        guards=lambda: [tasks.c.progress < _P("progress", type_=sa.SmallInteger())],
    ),
    "complete": _Shape(
        lifecycle.COMPLETE,
        lambda: {
            "status": _P("to_status", type_=sa.String()),
            "progress": 100,
            "error_message": _P("error_message", type_=sa.Text()),
            "check_results": _P("check_results", type_=_JSON),
            "verdict": _P("verdict", type_=sa.String()),
            "tcb_status": _P("tcb_status", type_=sa.String()),
            "s3_bucket": _P("s3_bucket", type_=sa.String()),
            "s3_key": _P("s3_key", type_=sa.String()),
            "s3_filename": _P("s3_filename", type_=sa.String()),
            "finished_at": _now(),
            "updated_at": _now(),
        },
    ),
    "fail": _Shape(
        lifecycle.FAIL,
        lambda: {
            "status": _const(TaskStatus.FAILED.value),
            "error_message": _P("error_message", type_=sa.Text()),
            "finished_at": _now(),
            "updated_at": _now(),
        },
    ),
    "cancel": _Shape(
        lifecycle.CANCEL,
        lambda: {
            "status": _const(TaskStatus.CANCELLED.value),
            "error_message": _P("error_message", type_=sa.Text()),
            "finished_at": _now(),
            "updated_at": _now(),
        },
    ),
    "mark_queued": _Shape(
        lifecycle.MARK_QUEUED,
        lambda: {
            "status": _const(TaskStatus.QUEUED.value),
            "queue_job_id": _job_id(),
            "enqueued_at": _now(),
            "updated_at": _now(),
        },
    ),
    "requeue": _Shape(
        lifecycle.REQUEUE,
        lambda: {"queue_job_id": _job_id(), "enqueued_at": _now(), "updated_at": _now()},
    ),
}


def _job_id() -> sa.ColumnElement[str]:
    # An empty job id from the queue keeps the one recorded before.
    return sa.func.coalesce(
        sa.func.nullif(_P("job_id", type_=sa.String()), ""), tasks.c.queue_job_id
    )


@dataclass
class _Change:
    """One guarded change to run: its shape and its parameters."""

    shape_name: str
    task_id: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> _Shape:
        return _SHAPES[self.shape_name]


class TaskStore(abc.ABC):
    """Tasks and their audit trail. One implementation per engine."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        # Called once per task that this store moved to a final status (metrics).
        self.on_finished: Callable[[Task], None] | None = None

    # --- engine specifics ---------------------------------------------------

    @abc.abstractmethod
    async def _fetch(self, key: Any, build: Builder, params: dict[str, Any]) -> Sequence[Row]:
        """Run the statement `build()` makes (built once per key) and return its rows."""

    @abc.abstractmethod
    async def _insert(self, values: dict[str, Any], call_request_id: str) -> Task | None:
        """Insert a task and its `created` event; None when its request_id exists."""

    @abc.abstractmethod
    async def _apply(self, change: _Change) -> Task | None:
        """Run a guarded change with its audit event; None when the guard refused."""

    @abc.abstractmethod
    async def _processing_times(
        self, after: datetime | None, before: datetime | None
    ) -> tuple[float, float]:
        """Average and p95 seconds from started_at to finished_at of processed tasks."""

    @abc.abstractmethod
    async def version(self) -> str:
        """The database server's version (the health probe)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def _fetch_one(self, key: Any, build: Builder, params: dict[str, Any]) -> Row | None:
        rows = await self._fetch(key, build, params)
        return rows[0] if rows else None

    # --- writes --------------------------------------------------------------

    async def create_task(self, new: NewTask) -> tuple[Task, bool]:
        """Store a PENDING task; with a known request_id, the first task instead.
        Returns the task and whether this call created it."""
        now = self.clock()
        values = {
            "id": str(uuid.uuid4()),
            "job_name": new.job_name,
            "queue_job_id": "",
            "request_id": new.request_id,
            "app_id": new.app_id,
            "app_name": new.app_name,
            "app_config_type": new.app_config_type.value,
            "contract_address": new.contract_address,
            "model_or_domain": new.model_or_domain,
            "app_metadata": new.app_metadata,
            "verification_flags": new.verification_flags.to_dict(),
            "status": TaskStatus.PENDING.value,
            "progress": 0,
            "error_message": "",
            "check_results": None,
            "verdict": "",
            "tcb_status": "",
            "s3_bucket": "",
            "s3_key": "",
            "s3_filename": "",
            "expected_compose_hash": new.expected_compose_hash,
            "evaluation_time": new.evaluation_time,
            "evidence": new.evidence,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(3):
            task = await self._insert(values, current_request_id())
            if task is not None:
                return task, True
            assert new.request_id is not None
            row = await self._fetch_one(
                "by_request_id", _select_by_request_id, {"request_id": new.request_id}
            )
            if row is not None:
                return _task_from_row(row), False
        raise RuntimeError(f"request_id {new.request_id!r} conflicts but no task carries it")

    async def start(self, task_id: str, worker_id: str) -> Task:
        """ACTIVE, one attempt more; returned with its evidence."""
        message = f"worker {worker_id}" if worker_id else ""
        return await self._change_or_refuse(
            self._change("start", task_id, EventType.STARTED, message)
        )

    async def update_progress(self, task_id: str, progress: int, message: str) -> Task:
        change = self._change("progress", task_id, EventType.PROGRESS, message)
        change.params["progress"] = progress
        return await self._change_or_refuse(change)

    async def complete(self, task_id: str, summary: ReportSummary) -> Task:
        """COMPLETED or FAILED as the summary decides against the task's enabled checks."""
        current = await self.get_task(task_id)
        if current.status not in lifecycle.COMPLETE.allowed_from:
            return lifecycle.COMPLETE.refuse_or_noop(current)
        status, error = lifecycle.decide_outcome(summary, current.verification_flags)
        event = EventType.COMPLETED if status is TaskStatus.COMPLETED else EventType.FAILED
        change = self._change("complete", task_id, event, error or "every enabled check passed")
        change.params.update(
            to_status=status.value,
            error_message=error,
            check_results=[c.to_dict() for c in summary.checks],
            verdict=summary.verdict,
            tcb_status=summary.tcb_status,
            s3_bucket=summary.s3_bucket,
            s3_key=summary.s3_key,
            s3_filename=summary.s3_filename,
        )
        return await self._change_or_refuse(change)

    async def fail(self, task_id: str, error_message: str) -> Task:
        change = self._change("fail", task_id, EventType.FAILED, error_message)
        change.params["error_message"] = error_message
        return await self._change_or_refuse(change)

    async def cancel(self, task_id: str, reason: str) -> Task:
        message = f"cancelled: {reason}" if reason else "cancelled by a client"
        change = self._change("cancel", task_id, EventType.CANCELLED, message)
        change.params["error_message"] = message
        return await self._change_or_refuse(change)

    async def mark_enqueued(self, task_id: str, job_id: str, already_enqueued: bool) -> Task:
        """Record the queue's acknowledgement: PENDING becomes QUEUED; a QUEUED or
        ACTIVE task gets the job id and a fresh enqueued_at (and a `requeued` event
        when the queue had lost it)."""
        queued = self._change("mark_queued", task_id, EventType.QUEUED, f"job {job_id}")
        queued.params["job_id"] = job_id
        task = await self._apply(queued)
        if task is not None:
            return task
        if already_enqueued:
            # Nothing happened on the queue: refresh the clock without an audit event.
            row = await self._fetch_one(
                "touch_enqueued", _touch_enqueued, {"task_id": task_id, "now": self.clock()}
            )
            task = _task_from_row(row) if row is not None else None
        else:
            requeue = self._change(
                "requeue", task_id, EventType.REQUEUED, f"job {job_id} (the queue had lost it)"
            )
            requeue.params["job_id"] = job_id
            task = await self._apply(requeue)
        return task if task is not None else await self.get_task(task_id)

    def _change(self, shape: str, task_id: str, event: EventType, message: str) -> _Change:
        return _Change(
            shape,
            task_id,
            {
                "task_id": task_id,
                "now": self.clock(),
                "event_type": event.value,
                "message": message,
                "call_request_id": current_request_id(),
            },
        )

    async def _change_or_refuse(self, change: _Change) -> Task:
        task = await self._apply(change)
        if task is not None:
            if self.on_finished is not None and task.status.finished:
                self.on_finished(task)
            return task
        view = TaskView.FULL if change.shape.with_evidence else TaskView.BASIC
        current = await self.get_task(change.task_id, view)
        return change.shape.transition.refuse_or_noop(current)

    # --- reads ---------------------------------------------------------------

    async def get_task(self, task_id: str, view: TaskView = TaskView.BASIC) -> Task:
        full = view is TaskView.FULL
        row = await self._fetch_one(
            ("task", full), lambda: _select_task(full), {"task_id": task_id}
        )
        if row is None:
            raise TaskNotFound(task_id)
        return _task_from_row(row, with_evidence=full)

    async def get_with_last_event(self, task_id: str) -> tuple[Task, int]:
        """The task and its latest event id, read in one statement (one snapshot)."""
        row = await self._fetch_one(
            "task_and_last_event", _select_task_and_last_event, {"task_id": task_id}
        )
        if row is None:
            raise TaskNotFound(task_id)
        return _task_from_row(row), int(row["last_event_id"])

    async def list_tasks(self, query: ListQuery) -> TaskPage:
        """A page newest first, after the cursor; keyset on (created_at, id)."""
        shape = _ListShape.of(query)
        rows = await self._fetch(("list", shape), shape.build, shape.params(query))
        page = [_task_from_row(row) for row in rows[: query.page_size]]
        more = len(rows) > query.page_size
        cursor = Cursor(page[-1].created_at, page[-1].id) if more and page else None
        return TaskPage(page, cursor)

    async def list_events(self, task_id: str, after_id: int = 0) -> list[TaskEvent]:
        rows = await self._fetch(
            "events", _select_events, {"task_id": task_id, "after_id": after_id}
        )
        if not rows and after_id == 0:
            await self.get_task(task_id)  # NotFound for an unknown task
        return [_event_from_row(row) for row in rows]

    async def stats(
        self, created_after: datetime | None, created_before: datetime | None
    ) -> TaskStats:
        has = (created_after is not None, created_before is not None)
        params = {"created_after": created_after, "created_before": created_before}
        rows = await self._fetch(
            ("count_by_status", has),
            lambda: _count_by_status(*has),
            {k: v for k, v in params.items() if v is not None},
        )
        by_status = {TaskStatus(row["status"]): int(row["count"]) for row in rows}
        average, p95 = await self._processing_times(created_after, created_before)
        return TaskStats(
            total=sum(by_status.values()),
            by_status=by_status,
            average_processing_seconds=average,
            p95_processing_seconds=p95,
        )

    async def reconcile_candidates(
        self, pending_before: datetime, stale_before: datetime, limit: int
    ) -> list[str]:
        """Tasks the queue may not hold: PENDING ones never acknowledged in time,
        and QUEUED or ACTIVE ones untouched for the stale timeout (their queue
        entry may be lost, for example by a Redis restart without persistence)."""
        rows = await self._fetch(
            "reconcile",
            _reconcile_candidates,
            {"pending_before": pending_before, "stale_before": stale_before, "limit": limit},
        )
        return [str(row["id"]) for row in rows]


# --- PostgreSQL ---------------------------------------------------------------------

_PG_DIALECT = PGDialect_psycopg()


def _event_select(
    source: Any, *, from_status: Any, to_status: Any, progress: Any
) -> sa.Select[Any]:
    """The SELECT feeding `INSERT INTO task_events` from a data-modifying CTE."""
    return sa.select(
        source.c.id,
        sa.cast(_P("event_type"), sa.String()),
        from_status,
        to_status,
        progress,
        sa.cast(_P("message"), sa.Text()),
        sa.cast(_P("call_request_id"), sa.String()),
        sa.cast(_P("now"), sa.DateTime(timezone=True)),
    )


def _pg_change(shape: _Shape) -> sa.Select[Any]:
    old = (
        sa.select(tasks.c.id, tasks.c.status.label("old_status"))
        .where(tasks.c.id == _P("task_id", type_=TaskId))
        .with_for_update()
        .subquery("old")
    )
    columns = _FULL_COLUMNS if shape.with_evidence else BASIC_COLUMNS
    updated = (
        sa.update(tasks)
        .where(tasks.c.id == old.c.id, _status_in(shape.transition.allowed_from), *shape.guards())
        .values(shape.assignments())
        .returning(*columns, old.c.old_status)
        .cte("updated")
    )
    audit = (
        sa.insert(task_events)
        .from_select(
            _EVENT_COLUMNS,
            _event_select(
                updated,
                from_status=updated.c.old_status,
                to_status=updated.c.status,
                progress=updated.c.progress,
            ),
        )
        .returning(task_events.c.id)
        .cte("audit")
    )
    return sa.select(updated, audit.c.id.label("event_id")).join_from(updated, audit, sa.true())


def _pg_insert() -> sa.Select[Any]:
    inserted = (
        pg.insert(tasks)
        .values({name: _P(name, type_=tasks.c[name].type) for name in _TASK_INSERT_COLUMNS})
        .on_conflict_do_nothing(constraint="uq_tasks_request_id")
        .returning(*BASIC_COLUMNS)
        .cte("inserted")
    )
    audit = (
        sa.insert(task_events)
        .from_select(
            _EVENT_COLUMNS,
            _event_select(
                inserted,
                from_status=sa.null(),
                to_status=_const(TaskStatus.PENDING.value),
                progress=sa.literal_column("0"),
            ),
        )
        .returning(task_events.c.id)
        .cte("audit")
    )
    return sa.select(inserted, audit.c.id.label("event_id")).join_from(inserted, audit, sa.true())


def _pg_processing_times(has_after: bool, has_before: bool) -> sa.Select[Any]:
    seconds = sa.extract("epoch", tasks.c.finished_at - tasks.c.started_at)
    return sa.select(
        sa.func.avg(seconds).label("average"),
        sa.func.percentile_cont(0.95).within_group(seconds).label("p95"),
    ).where(*_processed(has_after, has_before))


def _pg_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: Json(v) if isinstance(v, dict | list) else v for k, v in params.items()}


async def _configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    # orjson parses the JSON columns (flags, metadata, check results) several
    # times faster than the json module: they are read on every call that
    # returns a task, and were a tenth of a ListTasks page's time.
    set_json_loads(orjson.loads, conn)
    # And writes them: CreateTask stores the inline evidence (tens of KB) and
    # CompleteTask the check results, where json.dumps showed in the profile.
    set_json_dumps(orjson.dumps, conn)


class PostgresTaskStore(TaskStore):
    """PostgreSQL through a psycopg 3 async pool, autocommit: one statement per call."""

    def __init__(self, url: str, *, pool_size: int, clock: Clock) -> None:
        super().__init__(clock)
        self.url = libpq_url(url)
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=min(2, pool_size),
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure_connection,
            timeout=5.0,
            open=False,
        )
        self._opened = False
        # key -> (SQL text, values of the literals SQLAlchemy turned into parameters)
        self._sql: dict[Any, tuple[str, dict[str, Any]]] = {}

    async def _connection_pool(self) -> AsyncConnectionPool[Any]:
        if not self._opened:
            self._opened = True
            await self._pool.open(wait=False)
        return self._pool

    def _compiled(self, key: Any, build: Builder) -> tuple[str, dict[str, Any]]:
        entry = self._sql.get(key)
        if entry is None:
            compiled = build().compile(dialect=_PG_DIALECT)
            literals = {k: v for k, v in compiled.params.items() if v is not None}
            entry = self._sql[key] = (str(compiled), literals)
        return entry

    async def _fetch(self, key: Any, build: Builder, params: dict[str, Any]) -> Sequence[Row]:
        sql, literals = self._compiled(key, build)
        pool = await self._connection_pool()
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, _pg_params({**literals, **params}))
                if cursor.description is None:
                    return []
                return await cursor.fetchall()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable(f"database unavailable: {str(exc).strip()[:200]}") from None

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()

    async def version(self) -> str:
        row = await self._fetch_one("version", lambda: sa.select(sa.func.version()), {})
        assert row is not None
        return str(next(iter(row.values())))

    async def _insert(self, values: dict[str, Any], call_request_id: str) -> Task | None:
        params = {**values, "event_type": EventType.CREATED.value, "message": ""}
        params.update(call_request_id=call_request_id, now=values["created_at"])
        row = await self._fetch_one("insert", _pg_insert, params)
        return _task_from_row(row) if row is not None else None

    async def _apply(self, change: _Change) -> Task | None:
        shape = change.shape
        row = await self._fetch_one(
            ("change", change.shape_name), lambda: _pg_change(shape), change.params
        )
        return _task_from_row(row, with_evidence=shape.with_evidence) if row else None

    async def _processing_times(
        self, after: datetime | None, before: datetime | None
    ) -> tuple[float, float]:
        has = (after is not None, before is not None)
        params = {"created_after": after, "created_before": before}
        row = await self._fetch_one(
            ("processing_times", has),
            lambda: _pg_processing_times(*has),
            {k: v for k, v in params.items() if v is not None},
        )
        if row is None:
            return 0.0, 0.0
        return float(row["average"] or 0.0), float(row["p95"] or 0.0)


# --- SQLite ---------------------------------------------------------------------------


class SqliteTaskStore(TaskStore):
    """The embedded SQLite file through the SQLAlchemy async engine (aiosqlite). One
    connection: SQLite has one writer at a time, and a single connection turns
    contention into a queue instead of SQLITE_BUSY."""

    def __init__(self, url: str, *, clock: Clock, on_change: OnChange | None) -> None:
        super().__init__(clock)
        self.engine: AsyncEngine = create_async_engine(url, pool_size=1, max_overflow=0)
        sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.on_change = on_change
        self._statements: dict[Any, sa.Executable] = {}

    def _statement(self, key: Any, build: Builder) -> sa.Executable:
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build()
        return statement

    async def _fetch(self, key: Any, build: Builder, params: dict[str, Any]) -> Sequence[Row]:
        statement = self._statement(key, build)
        async with self.engine.begin() as conn:
            result = await conn.execute(statement, params)
            return result.mappings().all() if result.returns_rows else []

    async def close(self) -> None:
        await self.engine.dispose()

    async def version(self) -> str:
        row = await self._fetch_one(
            "version", lambda: sa.select(sa.func.sqlite_version().label("v")), {}
        )
        assert row is not None
        return f"SQLite {row['v']}"

    def _changed(self, task_id: str) -> None:
        if self.on_change is not None:
            self.on_change(task_id)

    async def _insert(self, values: dict[str, Any], call_request_id: str) -> Task | None:
        statement = self._statement(
            "insert",
            lambda: (
                sqlite.insert(tasks)
                .on_conflict_do_nothing(index_elements=["request_id"])
                .returning(*BASIC_COLUMNS)
            ),
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(statement, values)).mappings().first()
            if row is None:
                return None
            await conn.execute(
                self._statement("event", lambda: sa.insert(task_events)),
                {
                    "task_id": values["id"],
                    "type": EventType.CREATED.value,
                    "from_status": None,
                    "to_status": TaskStatus.PENDING.value,
                    "progress": 0,
                    "message": "",
                    "request_id": call_request_id,
                    "created_at": values["created_at"],
                },
            )
        self._changed(values["id"])
        return _task_from_row(row)

    async def _apply(self, change: _Change) -> Task | None:
        shape = change.shape
        status_statement = self._statement("status", _select_status)
        update_statement = self._statement(
            ("update", change.shape_name), lambda: _sqlite_change(shape)
        )
        params = change.params
        async with self.engine.begin() as conn:
            old = (await conn.execute(status_statement, {"task_id": change.task_id})).scalar()
            if old is None:
                raise TaskNotFound(change.task_id)
            row = (await conn.execute(update_statement, params)).mappings().first()
            if row is None:
                return None
            task = _task_from_row(row, with_evidence=shape.with_evidence)
            await conn.execute(
                self._statement("event", lambda: sa.insert(task_events)),
                {
                    "task_id": task.id,
                    "type": params["event_type"],
                    "from_status": old,
                    "to_status": task.status.value,
                    "progress": task.progress,
                    "message": params["message"],
                    "request_id": params["call_request_id"],
                    "created_at": params["now"],
                },
            )
        self._changed(task.id)
        return task

    async def _processing_times(
        self, after: datetime | None, before: datetime | None
    ) -> tuple[float, float]:
        has = (after is not None, before is not None)
        params = {"created_after": after, "created_before": before}
        rows = await self._fetch(
            ("processed", has),
            lambda: sa.select(tasks.c.started_at, tasks.c.finished_at).where(*_processed(*has)),
            {k: v for k, v in params.items() if v is not None},
        )
        durations = sorted((row["finished_at"] - row["started_at"]).total_seconds() for row in rows)
        if not durations:
            return 0.0, 0.0
        return sum(durations) / len(durations), lifecycle.percentile_cont(durations, 0.95)


def _select_status() -> sa.Select[Any]:
    return sa.select(tasks.c.status).where(tasks.c.id == _P("task_id", type_=TaskId))


def _sqlite_change(shape: _Shape) -> sa.Update:
    columns = _FULL_COLUMNS if shape.with_evidence else BASIC_COLUMNS
    return (
        sa.update(tasks)
        .where(
            tasks.c.id == _P("task_id", type_=TaskId),
            _status_in(shape.transition.allowed_from),
            *shape.guards(),
        )
        .values(shape.assignments())
        .returning(*columns)
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
