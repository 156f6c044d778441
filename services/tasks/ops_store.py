"""Operator actions on the tasks table (retry, dead letters, retention), on
PostgreSQL or SQLite through the SQLAlchemy async engine the apps use. Each
change is one transaction: a retry writes its `retried` audit event with it, a
removal writes its retention_audit row with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.context import current_request_id

from .model import (
    AppConfigType,
    Cursor,
    EventType,
    Task,
    TaskEvent,
    TaskStatus,
)
from .operations import StatusRule
from .rows import UNSTARTED_RUN, event_from_row, task_from_row, utc
from .tables import BASIC_COLUMNS, apps, retention_audit, task_events, tasks

RETRYABLE = (TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)
# Cleared on retry: what the failed run left.
_RESET: dict[str, Any] = {
    **UNSTARTED_RUN,
    "started_at": None,
    "finished_at": None,
    "enqueued_at": None,
}


class OpsStore:
    def __init__(self, engine: AsyncEngine, on_change: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        # SQLite: wake in-process watchers after a commit (PostgreSQL's trigger NOTIFYs).
        self.on_change = on_change

    # --- retry --------------------------------------------------------------------------

    async def retry(self, task_ids: Sequence[str], reason: str, now: datetime) -> list[str]:
        """PENDING again for each FAILED or CANCELLED task of `task_ids`, with a
        `retried` event; returns the ids it retried."""
        if not task_ids:
            return []
        ids = list(task_ids)
        async with self.engine.begin() as conn:
            old = {
                str(row.id): row.status
                for row in await conn.execute(
                    sa.select(tasks.c.id, tasks.c.status).where(
                        tasks.c.id.in_(ids), tasks.c.status.in_(RETRYABLE)
                    )
                )
            }
            if not old:
                return []
            result = await conn.execute(
                sa.update(tasks)
                .where(tasks.c.id.in_(list(old)), tasks.c.status.in_(RETRYABLE))
                # A new run: its attempts' reports are its own (never adopted
                # from the failed run's, lifecycle.earlier_attempts).
                .values(**_RESET, run_base_attempt=tasks.c.attempts, updated_at=now)
                .returning(tasks.c.id)
            )
            done = [str(row.id) for row in result]
            if done:
                await conn.execute(
                    sa.insert(task_events),
                    [
                        {
                            "task_id": task_id,
                            "type": EventType.RETRIED.value,
                            "from_status": old[task_id],
                            "to_status": TaskStatus.PENDING.value,
                            "progress": 0,
                            "message": reason,
                            "request_id": current_request_id(),
                            "created_at": now,
                        }
                        for task_id in done
                    ],
                )
        if self.on_change is not None:
            for task_id in done:
                self.on_change(task_id)
        return done

    async def failed_ids(
        self,
        *,
        app_id: str,
        app_config_type: AppConfigType | None,
        created_after: datetime | None,
        created_before: datetime | None,
        errors_only: bool,
        limit: int,
    ) -> list[str]:
        clauses = [tasks.c.status == TaskStatus.FAILED.value]
        if app_id:
            clauses.append(tasks.c.app_id == app_id)
        if app_config_type is not None:
            clauses.append(tasks.c.app_config_type == app_config_type.value)
        if created_after is not None:
            clauses.append(tasks.c.created_at >= created_after)
        if created_before is not None:
            clauses.append(tasks.c.created_at < created_before)
        if errors_only:
            clauses.append(tasks.c.verdict == "")
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(tasks.c.id).where(*clauses).order_by(tasks.c.created_at).limit(limit)
            )
            return [str(row.id) for row in rows]

    # --- dead letters ---------------------------------------------------------------------

    async def dead_letters(
        self, app_id: str, after: Cursor | None, limit: int
    ) -> tuple[list[Task], dict[str, list[TaskEvent]]]:
        """FAILED tasks without a verdict (an error, not a check), newest first, with
        their audit trails."""
        clauses = [tasks.c.status == TaskStatus.FAILED.value, tasks.c.verdict == ""]
        if app_id:
            clauses.append(tasks.c.app_id == app_id)
        if after is not None:
            clauses.append(
                sa.tuple_(tasks.c.created_at, tasks.c.id)
                < sa.tuple_(
                    sa.literal(after.created_at, tasks.c.created_at.type),
                    sa.literal(after.id, tasks.c.id.type),
                )
            )
        async with self.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(*BASIC_COLUMNS)
                        .where(*clauses)
                        .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
                        .limit(limit)
                    )
                )
                .mappings()
                .all()
            )
            found = [task_from_row(row) for row in rows]
            events: dict[str, list[TaskEvent]] = {task.id: [] for task in found}
            if found:
                for row in (
                    await conn.execute(
                        sa.select(task_events)
                        .where(task_events.c.task_id.in_(list(events)))
                        .order_by(task_events.c.id)
                    )
                ).mappings():
                    event = event_from_row(row)
                    events[event.task_id].append(event)
        return found, events

    # --- retention ----------------------------------------------------------------------------

    async def expired(self, rule: StatusRule, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` tasks the rule no longer keeps, never an app's latest task."""
        protected = sa.select(apps.c.latest_task_id).where(apps.c.latest_task_id.is_not(None))
        base = sa.select(
            tasks.c.id,
            tasks.c.app_id,
            tasks.c.status,
            tasks.c.s3_key,
            tasks.c.created_at,
            tasks.c.finished_at,
        ).where(tasks.c.status == rule.status.value, tasks.c.id.not_in(protected))
        out: list[dict[str, Any]] = []
        async with self.engine.connect() as conn:
            cutoff = rule.cutoff(now)
            if cutoff is not None:
                statement = (
                    base.where(tasks.c.finished_at < cutoff)
                    .order_by(tasks.c.finished_at)
                    .limit(limit)
                )
                for row in (await conn.execute(statement)).mappings():
                    out.append({**row, "reason": rule.age_reason()})
            if rule.max_count and len(out) < limit:
                seen = {row["id"] for row in out}
                statement = (
                    base.order_by(tasks.c.finished_at.desc(), tasks.c.id.desc())
                    .offset(rule.max_count)
                    .limit(limit)
                )
                for row in (await conn.execute(statement)).mappings():
                    if row["id"] not in seen and len(out) < limit:
                        out.append({**row, "reason": rule.count_reason()})
        return out

    async def remove(self, victims: Sequence[dict[str, Any]], now: datetime) -> int:
        """Delete the tasks (their events go with them) and write one audit row each,
        in one transaction; a task whose status changed meanwhile is kept."""
        if not victims:
            return 0
        by_id = {str(v["id"]): v for v in victims}
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(tasks)
                .where(
                    tasks.c.id.in_(list(by_id)),
                    tasks.c.status.in_({str(v["status"]) for v in victims}),
                    tasks.c.id.not_in(
                        sa.select(apps.c.latest_task_id).where(apps.c.latest_task_id.is_not(None))
                    ),
                )
                .returning(tasks.c.id)
            )
            removed = [str(row.id) for row in result]
            if removed:
                await conn.execute(
                    sa.insert(retention_audit),
                    [
                        {
                            "task_id": task_id,
                            "app_id": by_id[task_id]["app_id"],
                            "status": by_id[task_id]["status"],
                            "s3_key": by_id[task_id]["s3_key"],
                            "reason": by_id[task_id]["reason"],
                            "task_created_at": by_id[task_id]["created_at"],
                            "task_finished_at": by_id[task_id]["finished_at"],
                            "removed_at": now,
                        }
                        for task_id in removed
                    ],
                )
        return len(removed)

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(retention_audit).order_by(retention_audit.c.id.desc()).limit(limit)
                )
            ).mappings()
            return [
                {
                    **row,
                    "task_id": str(row["task_id"]),
                    "task_created_at": utc(row["task_created_at"]),
                    "removed_at": utc(row["removed_at"]),
                }
                for row in rows
            ]
