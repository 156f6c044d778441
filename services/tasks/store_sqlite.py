"""The SQLite adapter of the task store (embedded mode).

A change is the guarded UPDATE ... RETURNING and its audit row (the same
statements.audit_select as PostgreSQL, from the updated row) in one
transaction on the store's single aiosqlite connection, through the
SQLAlchemy async engine; watchers are woken in-process after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import database, lifecycle
from . import statements as st
from .errors import TaskNotFound
from .model import Task
from .rows import Audit, LeaseRow, Row, lease_row, task_from_row
from .store import Builder, Clock, OnChange, TaskStore
from .tables import BASIC_COLUMNS, TaskId, tasks


def _insert() -> sa.Insert:
    return (
        sqlite.insert(tasks)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(*BASIC_COLUMNS)
    )


def _audit(from_status: Any) -> sa.Insert:
    """The audit row of the task `task_id`, selected from its row as just written."""
    source = sa.select(tasks).where(tasks.c.id == st.P("task_id", type_=TaskId)).subquery("t")
    return st.audit_insert(source, from_status=from_status)


class _Binds:
    """Bind parameters standing in for a batch item's columns (`src.c.<name>`),
    prefixed: a bind named like a column is reserved in an UPDATE."""

    def __init__(self, columns: tuple[tuple[str, Any], ...]) -> None:
        self.c = SimpleNamespace(
            **{name: st.P(f"item_{name}", type_=type_) for name, type_ in columns}
        )


def _lease_update(shape: st.LeaseShape) -> sa.Update:
    src = _Binds((*st.ITEM_COLUMNS, *shape.columns))
    return (
        sa.update(tasks)
        .where(tasks.c.id == src.c.id, *shape.where(src, tasks))
        .values(shape.assignments(src))
        .returning(tasks.c.attempts)
    )


def _lease_audit(shape: st.LeaseShape) -> sa.Insert:
    src = sa.select(tasks).where(tasks.c.id == st.P("item_id", type_=TaskId)).subquery("t")
    old_status = sa.cast(st.P("old_status"), sa.String())
    binds = _Binds((*st.ITEM_COLUMNS, *shape.columns))
    event_type, message = shape.audit_of(old_status, binds)
    # The event's expressions read the task's columns from the updated row.
    return st.audit_insert(
        src, old_status, sa.cast(event_type, sa.String()), sa.cast(message, sa.Text())
    )


def _lease_old() -> sa.Select[Any]:
    return sa.select(tasks.c.status, tasks.c.attempts, tasks.c.verdict, tasks.c.created_at).where(
        tasks.c.id == st.P("item_id", type_=TaskId)
    )


class SqliteTaskStore(TaskStore):
    """The embedded SQLite file through the SQLAlchemy async engine (aiosqlite). One
    connection: SQLite has one writer at a time, and a single connection turns
    contention into a queue instead of SQLITE_BUSY."""

    def __init__(self, url: str, *, clock: Clock, on_change: OnChange | None) -> None:
        super().__init__(clock)
        self.engine: AsyncEngine = database.engine(url)
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

    async def _write_audit(
        self, conn: AsyncConnection, task_id: str, from_status: str | None, params: dict[str, Any]
    ) -> None:
        if from_status is None:
            statement = self._statement("audit_created", lambda: _audit(sa.null()))
        else:
            statement = self._statement(
                "audit", lambda: _audit(sa.cast(st.P("old_status"), sa.String()))
            )
        await conn.execute(statement, {**params, "task_id": task_id, "old_status": from_status})

    async def insert_task(self, values: dict[str, Any], audit: Audit) -> Task | None:
        statement = self._statement("insert", _insert)
        async with self.engine.begin() as conn:
            row = (await conn.execute(statement, values)).mappings().first()
            if row is None:
                return None
            await self._write_audit(conn, values["id"], None, audit.params())
        self._changed(values["id"])
        return task_from_row(row)

    async def insert_tasks(
        self, values: list[dict[str, Any]], audit: Audit
    ) -> list[tuple[Task, bool] | None]:
        """Row by row in one transaction (the single connection queues writers):
        the known request_ids first, and nothing inserted when one is another
        owner's."""
        insert = self._statement("insert", _insert)
        by_request_id = self._statement("by_request_id", st.select_by_request_id)
        found: list[tuple[Task, bool] | None] = [None] * len(values)
        created: list[str] = []
        async with self.engine.begin() as conn:
            for index, row in enumerate(values):
                if row["request_id"] is None:
                    continue
                known = (await conn.execute(by_request_id, row)).mappings().first()
                if known is not None:
                    found[index] = (task_from_row(known), False)
            owner = values[0]["owner"]
            if any(item is not None and item[0].owner != owner for item in found):
                return found
            for index, row in enumerate(values):
                if found[index] is not None:
                    continue
                new = (await conn.execute(insert, row)).mappings().first()
                if new is None:  # the same request_id earlier in this batch
                    continue
                await self._write_audit(conn, row["id"], None, audit.params())
                found[index] = (task_from_row(new), True)
                created.append(row["id"])
        for task_id in created:
            self._changed(task_id)
        return found

    async def _apply(self, change: st.Change) -> Task | None:
        shape = change.shape
        status_statement = self._statement("status", st.select_status)
        update_statement = self._statement(("update", change.shape_name), shape.update)
        async with self.engine.begin() as conn:
            old = (await conn.execute(status_statement, {"task_id": change.task_id})).scalar()
            if old is None:
                raise TaskNotFound(change.task_id)
            row = (await conn.execute(update_statement, change.params)).mappings().first()
            if row is None:
                return None
            task = task_from_row(row, with_evidence=shape.with_evidence)
            await self._write_audit(conn, task.id, old, change.params)
        self._changed(task.id)
        return task

    async def _apply_leases(
        self, shape_name: str, items: list[dict[str, Any]], audit: Audit
    ) -> list[LeaseRow]:
        """Item by item in one transaction: SQLite has no data-modifying CTEs, and
        its one connection makes the statements cheap."""
        shape = st.LEASE_SHAPES[shape_name]
        old_statement = self._statement("lease_old", _lease_old)
        update = self._statement(("lease", shape_name), lambda: _lease_update(shape))
        audit_statement = self._statement(("lease_audit", shape_name), lambda: _lease_audit(shape))
        common = audit.params()
        results: list[LeaseRow] = []
        changed: list[str] = []
        async with self.engine.begin() as conn:
            for item in items:
                params = {**common, **{f"item_{k}": v for k, v in item.items()}}
                old = (await conn.execute(old_statement, params)).mappings().first()
                new_attempt = None
                if old is not None:
                    new_attempt = (await conn.execute(update, params)).scalar()
                applied = new_attempt is not None
                if applied and shape.audited:
                    await conn.execute(
                        audit_statement,
                        {
                            **params,
                            "old_status": old["status"] if old else None,
                        },
                    )
                if applied:
                    changed.append(item["id"])
                results.append(
                    lease_row(
                        {
                            "id": item["id"],
                            "status": old["status"] if old else None,
                            "attempts": old["attempts"] if old else 0,
                            "verdict": old["verdict"] if old else "",
                            "created_at": old["created_at"] if old else None,
                            "applied": applied,
                            "new_attempt": new_attempt,
                        }
                    )
                )
        for task_id in changed:
            self._changed(task_id)
        return results

    async def _upsert_queue_state(self, params: dict[str, Any]) -> None:
        await self._fetch(
            "upsert_queue_state", lambda: st.upsert_queue_state(sqlite.insert), params
        )

    async def get_tasks(self, task_ids: list[str], full: bool) -> list[Task]:
        rows = await self._fetch(
            ("tasks_in", full),
            lambda: st.select_tasks_in(tasks.c.id.in_(st.P("ids", expanding=True)), full),
            {"ids": task_ids},
        )
        return [task_from_row(row, with_evidence=full) for row in rows]

    async def _processing_times(
        self, has: tuple[bool, bool], params: dict[str, Any]
    ) -> tuple[float, float]:
        rows = await self._fetch(
            ("processed", has),
            lambda: sa.select(tasks.c.started_at, tasks.c.finished_at).where(*st.processed(*has)),
            params,
        )
        durations = sorted((row["finished_at"] - row["started_at"]).total_seconds() for row in rows)
        if not durations:
            return 0.0, 0.0
        return sum(durations) / len(durations), lifecycle.percentile_cont(durations, 0.95)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
