"""The apps table, and the scheduler's lock, on PostgreSQL or SQLite (one adapter).

Not a hot path (an operator's CRUD, one scheduler pass every few seconds), so it
goes through the SQLAlchemy async engine on both engines. The scheduler's lock:
- PostgreSQL: `pg_try_advisory_xact_lock` inside a transaction held for the whole
  pass, so with several tasks-service replicas one schedules at a time, and a
  replica that dies mid-pass releases the lock with its connection;
- SQLite (embedded, one process): an in-process lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.errors import AlreadyExists, NotFound

from . import database
from .apps import App, AppFilter, AppSource, AppState, LatestTask, Schedule
from .model import AppConfigType, TaskStatus, VerificationFlags
from .tables import apps, tasks

# The advisory lock key of the scheduler (any constant shared by every replica).
SCHEDULER_LOCK_KEY = 0x7665726966696572 & 0x7FFFFFFFFFFFFFFF  # "verifier"
RETENTION_LOCK_KEY = SCHEDULER_LOCK_KEY - 1

_LATEST = [
    tasks.c.status.label("t_status"),
    tasks.c.verdict.label("t_verdict"),
    tasks.c.created_at.label("t_created_at"),
    tasks.c.finished_at.label("t_finished_at"),
    tasks.c.s3_key.label("t_s3_key"),
]


class AppNotFound(NotFound):
    def __init__(self, app_id: str) -> None:
        super().__init__(f"app {app_id!r} not found")


class AppExists(AlreadyExists):
    def __init__(self, app_id: str) -> None:
        super().__init__(f"app {app_id!r} exists")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _app_from_row(row: Mapping[str, Any]) -> App:
    latest = None
    if row["latest_task_id"] is not None and row["t_status"] is not None:
        latest = LatestTask(
            id=str(row["latest_task_id"]),
            status=TaskStatus(row["t_status"]),
            verdict=row["t_verdict"],
            created_at=_utc(row["t_created_at"]) or row["t_created_at"],
            finished_at=_utc(row["t_finished_at"]),
            s3_key=row["t_s3_key"],
        )
    return App(
        id=row["id"],
        name=row["name"],
        app_config_type=AppConfigType(row["app_config_type"]),
        contract_address=row["contract_address"],
        model_or_domain=row["model_or_domain"],
        verification_flags=VerificationFlags.from_dict(row["verification_flags"] or {}),
        expected_compose_hash=row["expected_compose_hash"],
        schedule=Schedule(row["interval_seconds"], row["retry_interval_seconds"], row["cron"]),
        state=AppState(row["state"]),
        schedule_paused=bool(row["schedule_paused"]),
        source=AppSource(row["source"]),
        created_at=_utc(row["created_at"]) or row["created_at"],
        updated_at=_utc(row["updated_at"]) or row["updated_at"],
        latest=latest,
    )


def _values(app: App) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "app_config_type": app.app_config_type.value,
        "contract_address": app.contract_address,
        "model_or_domain": app.model_or_domain,
        "verification_flags": app.verification_flags.to_dict(),
        "expected_compose_hash": app.expected_compose_hash,
        "interval_seconds": app.schedule.interval_seconds,
        "retry_interval_seconds": app.schedule.retry_interval_seconds,
        "cron": app.schedule.cron,
        "state": app.state.value,
        "schedule_paused": app.schedule_paused,
        "source": app.source.value,
        "created_at": app.created_at,
        "updated_at": app.updated_at,
    }


def _select() -> sa.Select[Any]:
    joined = apps.outerjoin(tasks, tasks.c.id == apps.c.latest_task_id)
    return sa.select(apps, *_LATEST).select_from(joined)


class AppStore:
    """Apps on the tasks database. `engine` may be shared with the task store (SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._local_locks: dict[int, asyncio.Lock] = {}

    @classmethod
    def open(cls, async_url: str, pool_size: int = 4) -> AppStore:
        return cls(database.engine(async_url, pool_size))

    async def close(self) -> None:
        await self.engine.dispose()

    async def _rows(self, statement: sa.Executable, params: Any = None) -> Sequence[Any]:
        """A read; once more on a fresh connection if the server dropped this one."""

        async def run() -> Sequence[Any]:
            async with self.engine.begin() as conn:
                result = await conn.execute(statement, params)
                return result.mappings().all() if result.returns_rows else []

        return await database.healed(run, lost=(OperationalError,), idempotent=True)

    # --- CRUD ---------------------------------------------------------------------------

    async def insert(self, app: App) -> App:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(sa.insert(apps), _values(app))
        except IntegrityError:
            raise AppExists(app.id) from None
        return await self.get(app.id)

    async def get(self, app_id: str) -> App:
        rows = await self._rows(_select().where(apps.c.id == app_id))
        if not rows:
            raise AppNotFound(app_id)
        return _app_from_row(rows[0])

    async def list_apps(self, app_filter: AppFilter, after_id: str | None, limit: int) -> list[App]:
        statement = _select()
        if app_filter.state is not None:
            statement = statement.where(apps.c.state == app_filter.state.value)
        else:
            statement = statement.where(apps.c.state != AppState.DELETED.value)
        if app_filter.app_config_type is not None:
            statement = statement.where(apps.c.app_config_type == app_filter.app_config_type.value)
        if after_id is not None:
            statement = statement.where(apps.c.id > after_id)
        rows = await self._rows(statement.order_by(apps.c.id).limit(limit))
        return [_app_from_row(row) for row in rows]

    async def save(self, app: App) -> App:
        """Write every field of an existing app."""
        values = _values(app)
        values.pop("created_at")
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.update(apps).where(apps.c.id == app.id).values(**values))
            if result.rowcount == 0:
                raise AppNotFound(app.id)
        return await self.get(app.id)

    async def all_ids(self, source: AppSource) -> set[str]:
        rows = await self._rows(
            sa.select(apps.c.id).where(
                apps.c.source == source.value, apps.c.state != AppState.DELETED.value
            )
        )
        return {row["id"] for row in rows}

    async def mark_deleted(self, app_ids: Sequence[str], now: datetime) -> int:
        if not app_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(apps)
                .where(apps.c.id.in_(list(app_ids)), apps.c.state != AppState.DELETED.value)
                .values(state=AppState.DELETED.value, updated_at=now)
            )
            return int(result.rowcount or 0)

    # --- the scheduler --------------------------------------------------------------------

    async def schedulable(self) -> list[App]:
        """Every enabled app whose schedule is not paused, with its latest task."""
        rows = await self._rows(
            _select().where(
                apps.c.state == AppState.ENABLED.value, apps.c.schedule_paused.is_(False)
            )
        )
        return [_app_from_row(row) for row in rows]

    async def record_latest(
        self, conn: AsyncConnection | None, pairs: Sequence[tuple[str, str]], now: datetime
    ) -> None:
        """Set each app's latest task (app id, task id), in one executemany."""
        if not pairs:
            return
        statement = (
            sa.update(apps)
            .where(apps.c.id == sa.bindparam("app_id"))
            .values(latest_task_id=sa.bindparam("task_id"), updated_at=now)
        )
        params = [{"app_id": app_id, "task_id": task_id} for app_id, task_id in pairs]
        if conn is not None:
            await conn.execute(statement, params)
            return
        async with self.engine.begin() as own:
            await own.execute(statement, params)

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[Lease]:
        """Hold the lock `key` for the block, if no one else holds it. On PostgreSQL
        the lease carries the lock's connection: writes made on it commit when the
        block ends, and roll back with the lock if the holder dies."""
        if not self.postgres:
            lock = self._local_locks.setdefault(key, asyncio.Lock())
            if lock.locked():
                yield Lease(False, None)
                return
            async with lock:
                yield Lease(True, None)
            return
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                acquired = bool(
                    (await conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key)))).scalar()
                )
                yield Lease(acquired, conn if acquired else None)
                await transaction.commit()
            except BaseException:
                if transaction.is_active:
                    await transaction.rollback()
                raise


@dataclass(frozen=True)
class Lease:
    """The outcome of `AppStore.exclusive`."""

    acquired: bool
    conn: AsyncConnection | None
