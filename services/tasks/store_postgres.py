"""The PostgreSQL adapter of the task store.

A change and its audit row are ONE statement (a data-modifying CTE) in
autocommit, so a transition is one round trip; the task_events trigger
NOTIFYs watchers in that transaction. The statements are compiled once by
SQLAlchemy's psycopg dialect and run on a psycopg 3 async connection pool:
the hot path skips the engine layer (about 0.6 ms of CPU per call here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.types.json import Json, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from . import database
from . import statements as st
from .model import Task
from .rows import Audit, LeaseRow, Row, lease_row, task_from_row
from .settings import database_url
from .store import Builder, Clock, TaskStore
from .tables import BASIC_COLUMNS, TaskId, task_events, tasks

_DIALECT = PGDialect_psycopg()


def _change(shape: st.Shape) -> sa.Select[Any]:
    old = (
        sa.select(tasks.c.id, tasks.c.status.label("old_status"))
        .where(tasks.c.id == st.P("task_id", type_=TaskId))
        .with_for_update()
        .subquery("old")
    )
    columns = st.FULL_COLUMNS if shape.with_evidence else BASIC_COLUMNS
    updated = (
        sa.update(tasks)
        .where(tasks.c.id == old.c.id, st.status_in(shape.transition.allowed_from), *shape.guards())
        .values(shape.assignments())
        .returning(*columns, old.c.old_status)
        .cte("updated")
    )
    audit = (
        st.audit_insert(updated, from_status=updated.c.old_status)
        .returning(task_events.c.id)
        .cte("audit")
    )
    return sa.select(updated, audit.c.id.label("event_id")).join_from(updated, audit, sa.true())


def _insert() -> sa.Select[Any]:
    inserted = (
        pg.insert(tasks)
        .values({name: st.P(name, type_=tasks.c[name].type) for name in st.TASK_INSERT_COLUMNS})
        .on_conflict_do_nothing(constraint="uq_tasks_request_id")
        .returning(*BASIC_COLUMNS)
        .cte("inserted")
    )
    audit = (
        st.audit_insert(inserted, from_status=sa.null()).returning(task_events.c.id).cte("audit")
    )
    return sa.select(inserted, audit.c.id.label("event_id")).join_from(inserted, audit, sa.true())


_ROW_COLUMNS = [name for name in st.TASK_INSERT_COLUMNS if name != "evidence"]


def _items(columns: list[sa.ColumnClause[Any]]) -> sa.CTE:
    """The `items` parameter (a JSON array of objects) as the table `req`, one
    row an item, typed by the columns."""
    items = (
        sa.func.jsonb_to_recordset(sa.cast(st.P("items"), JSONB))
        .table_valued(*columns)
        .render_derived(name="r", with_types=True)
    )
    return sa.select(items).cte("req")


def _insert_many() -> sa.CompoundSelect:
    """A batch of new tasks in ONE statement: the rows (a JSON array) as a table,
    the INSERT with its audit rows, and per row the new task or the one its
    request_id already names (the outer SELECT sees the table as it was before
    the statement, so a task inserted here is not read twice). Nothing is
    inserted when a known request_id belongs to another owner.

    The evidence (tens of KB a task) comes apart, as a JSON array in row order:
    json_array_elements hands each element over as a json value after one
    scan, where a column of the rows' jsonb recordset was parsed into jsonb,
    printed back and parsed again as json (half of the insert's CPU on the
    server), and then carried through the materialized rows."""
    columns = [
        sa.column("ord", sa.Integer()),
        *(sa.column(name, tasks.c[name].type) for name in _ROW_COLUMNS),
    ]
    req = _items(columns)
    evidence = (
        sa.func.json_array_elements(sa.cast(st.P("evidence"), sa.JSON()))
        .table_valued(sa.column("value", sa.JSON()), with_ordinality="n")
        .render_derived(name="e")
    )
    # A task without evidence is a JSON null in the array: SQL NULL in the row.
    evidence_value = sa.case(
        (sa.func.json_typeof(evidence.c.value) == "null", sa.null()), else_=evidence.c.value
    )
    foreign = (
        sa.select(sa.literal(1))
        .select_from(req.join(tasks, tasks.c.request_id == req.c.request_id))
        .where(tasks.c.owner.is_distinct_from(req.c.owner))
    )
    inserted = (
        pg.insert(tasks)
        .from_select(
            [*_ROW_COLUMNS, "evidence"],
            sa.select(*(req.c[name] for name in _ROW_COLUMNS), evidence_value)
            .join_from(req, evidence, evidence.c.n == req.c.ord + 1)
            .where(~sa.exists(foreign))
            .order_by(req.c.ord),
        )
        .on_conflict_do_nothing(constraint="uq_tasks_request_id")
        .returning(*BASIC_COLUMNS)
        .cte("inserted")
    )
    audit = st.audit_insert(inserted, from_status=sa.null()).cte("audit")
    new = sa.select(inserted, req.c.ord, sa.true().label("created")).join_from(
        inserted, req, req.c.id == inserted.c.id
    )
    known = sa.select(*BASIC_COLUMNS, req.c.ord, sa.false().label("created")).join_from(
        req, tasks, tasks.c.request_id == req.c.request_id
    )
    return sa.union_all(new.add_cte(audit), known)


def _lease(shape: st.LeaseShape) -> sa.Select[Any]:
    """A batch change in ONE statement: the items (a JSON array) as a table,
    the tasks locked, the guarded UPDATE, its audit rows, and per item what
    was found and whether it was applied, in item order."""
    columns = [sa.column(name, type_) for name, type_ in (*st.ITEM_COLUMNS, *shape.columns)]
    req = _items(columns)
    old = (
        sa.select(tasks.c.id, tasks.c.status, tasks.c.attempts, tasks.c.verdict, tasks.c.created_at)
        .where(tasks.c.id.in_(sa.select(req.c.id)))
        .with_for_update()
        .cte("old")
    )
    updated = (
        sa.update(tasks)
        .where(tasks.c.id == req.c.id, old.c.id == req.c.id, *shape.where(req, old))
        .values(shape.assignments(req))
        .returning(
            tasks.c.id,
            tasks.c.status,
            tasks.c.progress,
            tasks.c.attempts,
            tasks.c.updated_at,
            old.c.status.label("old_status"),
            *(
                expr.label(name)
                for expr, name in zip(
                    shape.audit_of(old.c.status, req), ("event_type", "message"), strict=True
                )
            ),
        )
        .cte("updated")
    )
    result = (
        sa.select(
            req.c.id,
            old.c.status,
            old.c.attempts,
            old.c.verdict,
            old.c.created_at,
            updated.c.id.is_not(None).label("applied"),
            updated.c.attempts.label("new_attempt"),
        )
        .select_from(
            req.outerjoin(old, old.c.id == req.c.id).outerjoin(updated, updated.c.id == req.c.id)
        )
        .order_by(req.c.ord)
    )
    if shape.audited:
        audit = st.audit_insert(
            updated, updated.c.old_status, updated.c.event_type, updated.c.message
        ).cte("audit")
        # (audit_insert skips the rows whose event_type is NULL.)
        result = result.add_cte(audit)
    return result


def _processing_times(has_after: bool, has_before: bool) -> sa.Select[Any]:
    seconds = sa.extract("epoch", tasks.c.finished_at - tasks.c.started_at)
    return sa.select(
        sa.func.avg(seconds).label("average"),
        sa.func.percentile_cont(0.95).within_group(seconds).label("p95"),
    ).where(*st.processed(has_after, has_before))


def _idempotent(key: Any, params: dict[str, Any]) -> bool:
    """Whether running the statement twice is the same as once. A start opens
    a new attempt each time; an insert without a request_id would be a second
    task (its id conflicts instead). Every other write is guarded or fenced so
    that a repeat changes nothing (and reads are reads)."""
    if key in (("change", "start"), ("lease", "start")):
        return False
    if key == "insert":
        return params.get("request_id") is not None
    if key == "insert_many":
        return all(item.get("request_id") is not None for item in params["items"])
    return True


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: Json(v) if isinstance(v, dict | list) else v for k, v in params.items()}


async def _configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    # orjson parses the JSON columns (flags, metadata, check results) several
    # times faster than the json module: they are read on every call that
    # returns a task, and were a tenth of a ListTasks page's time.
    set_json_loads(orjson.loads, conn)
    # And writes them: CreateTask stores the inline evidence (tens of KB) and
    # CompleteTasks the check results, where json.dumps showed in the profile.
    set_json_dumps(orjson.dumps, conn)


class PostgresTaskStore(TaskStore):
    """PostgreSQL through a psycopg 3 async pool, autocommit: one statement per call."""

    def __init__(self, url: str, *, pool_size: int, clock: Clock) -> None:
        super().__init__(clock)
        self.url = database_url(url, "libpq")
        self._pool = database.task_pool(self.url, pool_size, _configure_connection)
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
            compiled = build().compile(dialect=_DIALECT)
            literals = {k: v for k, v in compiled.params.items() if v is not None}
            entry = self._sql[key] = (str(compiled), literals)
        return entry

    async def _fetch(self, key: Any, build: Builder, params: dict[str, Any]) -> Sequence[Row]:
        sql, literals = self._compiled(key, build)
        values = _params({**literals, **params})
        pool = await self._connection_pool()

        async def run() -> Sequence[Row]:
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(sql, values)
                    if cursor.description is None:
                        return []
                    return await cursor.fetchall()
            except PoolTimeout as exc:
                raise database.unavailable(exc) from None

        # A pooled connection the server dropped (a restart): the pool discards
        # it on return, and an idempotent statement runs once more.
        return await database.healed(
            run,
            lost=(psycopg.OperationalError,),
            idempotent=_idempotent(key, params),
            check=pool.check,
        )

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()

    async def version(self) -> str:
        row = await self._fetch_one("version", lambda: sa.select(sa.func.version()), {})
        assert row is not None
        return str(next(iter(row.values())))

    async def insert_task(self, values: dict[str, Any], audit: Audit) -> Task | None:
        row = await self._fetch_one("insert", _insert, {**values, **audit.params()})
        return task_from_row(row) if row is not None else None

    async def insert_tasks(
        self, values: list[dict[str, Any]], audit: Audit
    ) -> list[tuple[Task, bool] | None]:
        items = [
            {**{k: v for k, v in row.items() if k != "evidence"}, "ord": index}
            for index, row in enumerate(values)
        ]
        evidence = [row.get("evidence") for row in values]
        rows = await self._fetch(
            "insert_many",
            _insert_many,
            {"items": items, "evidence": Json(evidence), **audit.params()},
        )
        found: list[tuple[Task, bool] | None] = [None] * len(values)
        for row in rows:
            found[row["ord"]] = (task_from_row(row), bool(row["created"]))
        return found

    async def _apply(self, change: st.Change) -> Task | None:
        shape = change.shape
        row = await self._fetch_one(
            ("change", change.shape_name), lambda: _change(shape), change.params
        )
        return task_from_row(row, with_evidence=shape.with_evidence) if row else None

    async def _apply_leases(
        self, shape_name: str, items: list[dict[str, Any]], audit: Audit
    ) -> list[LeaseRow]:
        shape = st.LEASE_SHAPES[shape_name]
        ordered = [{**item, "ord": index} for index, item in enumerate(items)]
        rows = await self._fetch(
            ("lease", shape_name),
            lambda: _lease(shape),
            {"items": Json(ordered), **audit.params()},
        )
        return [lease_row(row) for row in rows]

    async def _upsert_queue_state(self, params: dict[str, Any]) -> None:
        await self._fetch("upsert_queue_state", lambda: st.upsert_queue_state(pg.insert), params)

    async def get_tasks(self, task_ids: list[str], full: bool) -> list[Task]:
        rows = await self._fetch(
            ("tasks_in", full),
            lambda: st.select_tasks_in(
                tasks.c.id == sa.any_(sa.cast(st.P("ids"), pg.ARRAY(pg.UUID))), full
            ),
            # An array literal: a list parameter would be taken for JSON (_params).
            {"ids": "{" + ",".join(task_ids) + "}"},
        )
        return [task_from_row(row, with_evidence=full) for row in rows]

    async def _processing_times(
        self, has: tuple[bool, bool], params: dict[str, Any]
    ) -> tuple[float, float]:
        row = await self._fetch_one(
            ("processing_times", has),
            lambda: _processing_times(*has),
            params,
        )
        if row is None:
            return 0.0, 0.0
        return float(row["average"] or 0.0), float(row["p95"] or 0.0)
