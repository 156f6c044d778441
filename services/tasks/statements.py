"""The statements both store adapters run: SQLAlchemy 2 Core constructs with
named bind parameters, built once per shape (no I/O here).

Every change is one guarded UPDATE (`... WHERE status IN (allowed)`) plus its
task_events row; `audit_select` is the one definition of that row's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from . import lifecycle
from .lifecycle import Transition
from .model import EventType, ListQuery, TaskStatus
from .tables import BASIC_COLUMNS, TaskId, UtcDateTime, queue_state, task_events, tasks

P = sa.bindparam
JSON = sa.JSON(none_as_null=True)
FULL_COLUMNS: list[sa.ColumnElement[Any]] = [*BASIC_COLUMNS, tasks.c.evidence]
EVENT_COLUMNS = [
    "task_id",
    "type",
    "from_status",
    "to_status",
    "progress",
    "message",
    "request_id",
    "created_at",
]
TASK_INSERT_COLUMNS = [
    c.name
    for c in tasks.c
    if c.name not in ("started_at", "finished_at", "enqueued_at", "next_attempt_at")
]


def const(value: str) -> sa.ColumnElement[str]:
    """A status or type value inlined as a SQL literal: a fixed vocabulary, never client text."""
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a vocabulary value: {value!r}")
    return sa.literal_column(f"'{value}'", sa.String())


def status_in(statuses: frozenset[TaskStatus]) -> sa.ColumnElement[bool]:
    return tasks.c.status.in_([const(status.value) for status in sorted(statuses)])


def audit_select(
    source: Any, from_status: Any, event_type: Any = None, message: Any = None
) -> sa.Select[Any]:
    """The values of one task_events row, selected from the changed task row
    (`source`: the UPDATE's or INSERT's RETURNING, or the tasks table itself).
    Status and progress are the task's new ones; the time is its updated_at
    (every change sets it to the change's time). The rest comes from
    `rows.Audit.params()`, or per row from the batch's items."""
    return sa.select(
        source.c.id,
        sa.cast(P("event_type"), sa.String()) if event_type is None else event_type,
        from_status,
        source.c.status,
        source.c.progress,
        sa.cast(P("message"), sa.Text()) if message is None else message,
        sa.cast(P("call_request_id"), sa.String()),
        source.c.updated_at,
    )


def audit_insert(
    source: Any, from_status: Any, event_type: Any = None, message: Any = None
) -> sa.Insert:
    select = audit_select(source, from_status, event_type, message)
    if event_type is not None:
        # A batch item whose change is no state change gets no audit row.
        select = select.where(event_type.is_not(None))
    return sa.insert(task_events).from_select(EVENT_COLUMNS, select)


# --- reads ------------------------------------------------------------------------


def select_task(full: bool) -> sa.Select[Any]:
    columns = FULL_COLUMNS if full else BASIC_COLUMNS
    return sa.select(*columns).where(tasks.c.id == P("task_id", type_=TaskId))


def select_status() -> sa.Select[Any]:
    return sa.select(tasks.c.status).where(tasks.c.id == P("task_id", type_=TaskId))


def select_task_and_last_event() -> sa.Select[Any]:
    last = (
        sa.select(sa.func.coalesce(sa.func.max(task_events.c.id), 0))
        .where(task_events.c.task_id == tasks.c.id)
        .scalar_subquery()
        .label("last_event_id")
    )
    return sa.select(*BASIC_COLUMNS, last).where(tasks.c.id == P("task_id", type_=TaskId))


def select_by_request_id() -> sa.Select[Any]:
    return sa.select(*BASIC_COLUMNS).where(tasks.c.request_id == P("request_id", type_=sa.String()))


def select_events() -> sa.Select[Any]:
    return (
        sa.select(task_events)
        .where(
            task_events.c.task_id == P("task_id", type_=TaskId),
            task_events.c.id > P("after_id", type_=sa.BigInteger()),
        )
        .order_by(task_events.c.id)
    )


def window_clauses(has_after: bool, has_before: bool) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if has_after:
        clauses.append(tasks.c.created_at >= P("created_after", type_=UtcDateTime()))
    if has_before:
        clauses.append(tasks.c.created_at < P("created_before", type_=UtcDateTime()))
    return clauses


@dataclass(frozen=True)
class ListShape:
    """Which filters a ListTasks query has: one compiled statement per shape."""

    status: bool
    app_id: bool
    app_config_type: bool
    created_after: bool
    created_before: bool
    cursor: bool
    # Only one owner's tasks (a submitter's list).
    owner: bool = False

    @classmethod
    def of(cls, query: ListQuery) -> ListShape:
        f = query.filter
        return cls(
            f.status is not None,
            bool(f.app_id),
            f.app_config_type is not None,
            f.created_after is not None,
            f.created_before is not None,
            query.after is not None,
            bool(f.owner),
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
        if f.owner:
            params["owner"] = f.owner
        if query.after is not None:
            params["cursor_created_at"] = query.after.created_at
            params["cursor_id"] = query.after.id
        return params

    def build(self) -> sa.Select[Any]:
        clauses = window_clauses(self.created_after, self.created_before)
        if self.status:
            clauses.append(tasks.c.status == P("status", type_=sa.String()))
        if self.app_id:
            clauses.append(tasks.c.app_id == P("app_id", type_=sa.String()))
        if self.app_config_type:
            clauses.append(tasks.c.app_config_type == P("app_config_type", type_=sa.String()))
        if self.owner:
            clauses.append(tasks.c.owner == P("owner", type_=sa.String()))
        if self.cursor:
            # Row comparison: the index on (filter, created_at, id) seeks straight to it.
            clauses.append(
                sa.tuple_(tasks.c.created_at, tasks.c.id)
                < sa.tuple_(
                    P("cursor_created_at", type_=UtcDateTime()), P("cursor_id", type_=TaskId)
                )
            )
        return (
            sa.select(*BASIC_COLUMNS)
            .where(*clauses)
            .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
            .limit(P("limit", type_=sa.Integer()))
        )


def count_by_status(has_after: bool, has_before: bool) -> sa.Select[Any]:
    return (
        sa.select(tasks.c.status, sa.func.count().label("count"))
        .where(*window_clauses(has_after, has_before))
        .group_by(tasks.c.status)
    )


def processed(has_after: bool, has_before: bool) -> list[sa.ColumnElement[bool]]:
    return [
        *window_clauses(has_after, has_before),
        status_in(frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})),
        tasks.c.started_at.is_not(None),
        tasks.c.finished_at.is_not(None),
    ]


def reconcile_candidates() -> sa.Select[Any]:
    stale_before = P("stale_before", type_=UtcDateTime())
    return (
        sa.select(tasks.c.id, tasks.c.status)
        .where(
            sa.or_(
                sa.and_(
                    tasks.c.status == const(TaskStatus.PENDING.value),
                    tasks.c.created_at < P("pending_before", type_=UtcDateTime()),
                ),
                sa.and_(
                    status_in(lifecycle.REQUEUE.allowed_from),
                    tasks.c.updated_at < stale_before,
                    sa.or_(tasks.c.enqueued_at.is_(None), tasks.c.enqueued_at < stale_before),
                ),
            )
        )
        .order_by(tasks.c.created_at)
        .limit(P("limit", type_=sa.Integer()))
    )


# --- guarded changes --------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One kind of guarded change: what it sets and what it requires."""

    transition: Transition
    assignments: Callable[[], dict[str, Any]]
    guards: Callable[[], list[sa.ColumnElement[bool]]] = lambda: []
    with_evidence: bool = False

    def update(self) -> sa.Update:
        """The guarded UPDATE of one task (`task_id`), returning its new row."""
        columns = FULL_COLUMNS if self.with_evidence else BASIC_COLUMNS
        return (
            sa.update(tasks)
            .where(
                tasks.c.id == P("task_id", type_=TaskId),
                status_in(self.transition.allowed_from),
                *self.guards(),
            )
            .values(self.assignments())
            .returning(*columns)
        )


def _now() -> sa.BindParameter[datetime]:
    return P("now", type_=UtcDateTime())


def _job_id() -> sa.ColumnElement[str]:
    # An empty job id from the queue keeps the one recorded before.
    return sa.func.coalesce(
        sa.func.nullif(P("job_id", type_=sa.String()), ""), tasks.c.queue_job_id
    )


SHAPES: dict[str, Shape] = {
    # Unfenced: a task its deliveries exhausted (worker.py) fails whatever its attempt.
    "fail": Shape(
        lifecycle.FAIL,
        lambda: {
            "status": const(TaskStatus.FAILED.value),
            "error_message": P("error_message", type_=sa.Text()),
            "finished_at": _now(),
            "updated_at": _now(),
        },
    ),
    "cancel": Shape(
        lifecycle.CANCEL,
        lambda: {
            "status": const(TaskStatus.CANCELLED.value),
            "error_message": P("error_message", type_=sa.Text()),
            "finished_at": _now(),
            "updated_at": _now(),
        },
    ),
}


@dataclass
class Change:
    """One guarded change to run: its shape, its audit entry and its parameters."""

    shape_name: str
    task_id: str
    params: dict[str, Any]

    @property
    def shape(self) -> Shape:
        return SHAPES[self.shape_name]


# --- batch changes of the worker path (one statement per batch on PostgreSQL) -----


@dataclass(frozen=True)
class LeaseShape:
    """A change the worker path makes to many tasks at once. Every item carries
    the task id, its attempt, its audit entry's type and message, and the
    values in `columns`; `assignments(src)` reads them from `src.c`."""

    transition: Transition
    columns: tuple[tuple[str, Any], ...]
    assignments: Callable[[Any], dict[str, Any]]
    # Only the task's current attempt may change it.
    fenced: bool = True
    # Writes an audit row (a state change); progress does not.
    audited: bool = True
    guards: Callable[[Any], list[sa.ColumnElement[bool]]] = lambda src: []
    # (type, message) of the audit row from the old status and the item; None
    # for no row. Default: the item's event_type and message.
    event: Callable[[Any, Any], tuple[Any, Any]] | None = None

    def audit_of(self, old_status: Any, src: Any) -> tuple[Any, Any]:
        if self.event is not None:
            return self.event(old_status, src)
        return src.c.event_type, src.c.message

    def where(self, src: Any, current: Any) -> list[sa.ColumnElement[bool]]:
        """The guard on the task as it is (`current`: its locked row, or tasks)."""
        clauses = [
            current.c.status.in_([const(s.value) for s in sorted(self.transition.allowed_from)])
        ]
        if self.fenced:
            clauses.append(current.c.attempts == src.c.attempt)
        return [*clauses, *self.guards(src)]


ITEM_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("ord", sa.Integer()),
    ("id", TaskId),
    ("attempt", sa.Integer()),
    ("event_type", sa.String()),
    ("message", sa.Text()),
)


def _finished(src: Any) -> dict[str, Any]:
    return {"finished_at": _now(), "updated_at": _now()}


LEASE_SHAPES: dict[str, LeaseShape] = {
    "start": LeaseShape(
        lifecycle.START,
        (),
        lambda src: {
            "status": const(TaskStatus.ACTIVE.value),
            "attempts": tasks.c.attempts + 1,
            "wait_reason": "",
            "next_attempt_at": sa.null(),
            "started_at": _now(),
            "updated_at": _now(),
        },
        fenced=False,
    ),
    "complete": LeaseShape(
        lifecycle.COMPLETE,
        (
            ("to_status", sa.String()),
            ("error_message", sa.Text()),
            ("check_results", JSON),
            ("verdict", sa.String()),
            ("tcb_status", sa.String()),
            ("s3_bucket", sa.String()),
            ("s3_key", sa.String()),
            ("s3_filename", sa.String()),
        ),
        lambda src: {
            "status": src.c.to_status,
            "progress": 100,
            "error_message": src.c.error_message,
            "check_results": src.c.check_results,
            "verdict": src.c.verdict,
            "tcb_status": src.c.tcb_status,
            "s3_bucket": src.c.s3_bucket,
            "s3_key": src.c.s3_key,
            "s3_filename": src.c.s3_filename,
            "wait_reason": "",
            "next_attempt_at": sa.null(),
            **_finished(src),
        },
    ),
    "fail": LeaseShape(
        lifecycle.FAIL,
        (("error_message", sa.Text()),),
        lambda src: {
            "status": const(TaskStatus.FAILED.value),
            "error_message": src.c.error_message,
            "wait_reason": "",
            "next_attempt_at": sa.null(),
            **_finished(src),
        },
    ),
    "defer": LeaseShape(
        lifecycle.DEFER,
        (("wait_reason", sa.Text()), ("next_attempt_at", UtcDateTime())),
        lambda src: {
            "status": const(TaskStatus.WAITING.value),
            "wait_reason": src.c.wait_reason,
            "next_attempt_at": src.c.next_attempt_at,
            "updated_at": _now(),
        },
    ),
    "progress": LeaseShape(
        lifecycle.PROGRESS,
        (("progress", sa.SmallInteger()),),
        lambda src: {"progress": src.c.progress, "updated_at": _now()},
        audited=False,
        guards=lambda src: [tasks.c.progress < src.c.progress],
    ),
}


def _enqueue_event(old_status: Any, src: Any) -> tuple[Any, Any]:
    """The acknowledgement's audit row: `queued` when it moved PENDING to QUEUED;
    `requeued` when the service layer found the queue had lost the task
    (src.requeue); else none (a worker was faster, or the queue still held it)."""
    job = sa.literal_column("'job '", sa.String()) + src.c.job_id
    event_type = sa.case(
        (old_status == const(TaskStatus.PENDING.value), const(EventType.QUEUED.value)),
        (src.c.requeue, const(EventType.REQUEUED.value)),
        else_=sa.null(),
    )
    message = sa.case(
        (
            src.c.requeue & (old_status != const(TaskStatus.PENDING.value)),
            job + sa.literal_column("' (the queue had lost it)'", sa.String()),
        ),
        else_=job,
    )
    return event_type, message


LEASE_SHAPES["enqueue"] = LeaseShape(
    lifecycle.ENQUEUE,
    (("job_id", sa.String()), ("requeue", sa.Boolean())),
    lambda src: {
        "status": sa.case(
            (tasks.c.status == const(TaskStatus.PENDING.value), const(TaskStatus.QUEUED.value)),
            else_=tasks.c.status,
        ),
        "queue_job_id": sa.func.coalesce(sa.func.nullif(src.c.job_id, ""), tasks.c.queue_job_id),
        "enqueued_at": _now(),
        "updated_at": _now(),
    },
    fenced=False,
    event=_enqueue_event,
)


def select_tasks_in(ids: sa.ColumnElement[bool], full: bool) -> sa.Select[Any]:
    """Tasks by id (`ids`: the engine's list condition on tasks.id)."""
    return sa.select(*(FULL_COLUMNS if full else BASIC_COLUMNS)).where(ids)


def select_queue_state() -> sa.Select[Any]:
    return sa.select(queue_state).where(
        queue_state.c.queue_name == P("queue_name", type_=sa.String())
    )


def upsert_queue_state(insert: Callable[[sa.Table], Any]) -> sa.Executable:
    """`insert`: the engine's dialect insert (both have on_conflict_do_update)."""
    statement = insert(queue_state).values(
        queue_name=P("queue_name", type_=sa.String()),
        paused=P("paused", type_=sa.Boolean()),
        changed_at=P("changed_at", type_=UtcDateTime()),
        changed_by=P("changed_by", type_=sa.String()),
    )
    return statement.on_conflict_do_update(
        index_elements=["queue_name"],
        set_={
            "paused": statement.excluded.paused,
            "changed_at": statement.excluded.changed_at,
            "changed_by": statement.excluded.changed_by,
        },
    )
