"""The tasks service's connection pools on its database, opened in one place,
and the one rule that heals them after the server dropped their connections
(a restart, a failover): check the pool, then run an idempotent statement once
more on a fresh connection; otherwise the call answers UNAVAILABLE.

- `task_pool`: the task store's psycopg 3 pool (the hot path, store_postgres);
- `engine`: the SQLAlchemy async engine of the apps, schedules and operations
  (apps_store, ops_store) and of the SQLite store (one connection: SQLite has
  one writer). On PostgreSQL its pool checks a connection before handing it
  out, and a dropped one invalidates the rest of the pool;
- `healed`: the retry-once rule both run their statements under.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.errors import Unavailable
from shared.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")


def task_pool(
    libpq_url: str,
    pool_size: int,
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
) -> AsyncConnectionPool[Any]:
    """The task store's pool, autocommit, rows as dicts; opened on first use."""
    from psycopg.rows import dict_row

    return AsyncConnectionPool(
        libpq_url,
        min_size=min(2, pool_size),
        max_size=pool_size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        configure=configure,
        timeout=5.0,
        open=False,
    )


def engine(async_url: str, pool_size: int = 4) -> AsyncEngine:
    """A SQLAlchemy async engine on the database: one connection on SQLite, else
    a pool of `pool_size` (2 more at a peak) that checks each connection before
    handing it out."""
    if async_url.startswith("sqlite"):
        return create_async_engine(async_url, pool_size=1, max_overflow=0)
    return create_async_engine(async_url, pool_size=pool_size, max_overflow=2, pool_pre_ping=True)


def unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"database unavailable: {str(exc).strip()[:200]}")


async def healed(
    body: Callable[[], Awaitable[T]],
    *,
    lost: tuple[type[BaseException], ...],
    idempotent: bool,
    check: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """`body()`; when it meets a connection the server dropped (`lost`), an
    idempotent body runs once more on a fresh connection after `check` (the
    pool's check of its idle connections: all of them died with the server).
    A second loss, or a body that must not run twice, is UNAVAILABLE."""
    try:
        return await body()
    except lost as exc:
        if not idempotent:
            raise unavailable(exc) from None
        log.warning("database.connection_lost", error=str(exc).strip()[:200])
    if check is not None:
        await check()
    try:
        return await body()
    except lost as exc:
        raise unavailable(exc) from None
