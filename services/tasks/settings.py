"""Settings of the tasks service (loaded by shared.config: environment over
TOML over defaults), and the one derivation of the database URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.config import CommonSettings, listen, optional_listen, positive, secret, url

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_SQLITE_SCHEMES = ("sqlite", "sqlite+aiosqlite")


def database_url(url: str, form: Literal["sync", "async", "libpq"]) -> str:
    """The same database as a URL for one consumer: `sync` for SQLAlchemy's
    synchronous engine and Alembic, `async` for its async engine (psycopg 3,
    aiosqlite), `libpq` for psycopg itself (LISTEN, tests). Takes any of the
    spellings operators write (postgres://, postgresql://, postgresql+psycopg://)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme in _POSTGRES_SCHEMES:
        return ("postgresql://" if form == "libpq" else "postgresql+psycopg://") + rest
    if scheme in _SQLITE_SCHEMES:
        return ("sqlite+aiosqlite://" if form == "async" else "sqlite://") + rest
    return url


@dataclass(frozen=True)
class TasksSettings(CommonSettings):
    """What the tasks service (TaskService over PostgreSQL or SQLite) is configured with."""

    # PostgreSQL URL (postgresql://...). Empty: embedded SQLite file under data/.
    database_url: str = url("", *_POSTGRES_SCHEMES, "sqlite", secret_url=True)
    database_pool_size: int = positive(10)
    # Apply migrations when the tasks service starts.
    migrate_on_start: bool = True
    tasks_listen_addr: str = listen("127.0.0.1:50051")
    # Prometheus /metrics (empty: none).
    tasks_metrics_listen_addr: str = optional_listen("0.0.0.0:9451")
    # Pending tasks older than this are enqueued again by the reconciler.
    reconcile_after_seconds: float = positive(10.0)
    reconcile_interval_seconds: float = positive(5.0)
    # Queued or active tasks untouched this long are sent to the queue again (its
    # entry may be lost, e.g. Redis restarted without persistence); the queue's
    # EnqueueTask is idempotent per task, so a live entry is not duplicated.
    requeue_stale_after_seconds: float = positive(900.0)
    # The scheduler: one pass every this many seconds creates the due apps' tasks.
    scheduler_enabled: bool = True
    scheduler_interval_seconds: float = positive(30.0)
    scheduler_batch_size: int = positive(500)
    # Phala Cloud app sync (off while the key is empty), every this many seconds.
    phala_cloud_api_key: str = secret()
    app_sync_interval_seconds: float = positive(3600.0)
    # Retention of finished tasks, per status: removed after an age (seconds) or
    # beyond a count (newest kept); 0 keeps them. Defaults: failed after 48 h.
    retention_failed_max_age_seconds: float = 48 * 3600.0
    retention_failed_max_count: int = 0
    retention_completed_max_age_seconds: float = 0.0
    retention_completed_max_count: int = 0
    retention_cancelled_max_age_seconds: float = 0.0
    retention_cancelled_max_count: int = 0
    retention_interval_seconds: float = positive(600.0)
    retention_batch_size: int = positive(500)
    # Deadline of one QueueService.EnqueueTask call from the tasks service.
    enqueue_timeout_seconds: float = positive(2.0)

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL: DATABASE_URL, or the embedded SQLite file."""
        if not self.database_url:
            return f"sqlite:///{Path(self.data_dir) / 'tasks.db'}"
        return database_url(self.database_url, "sync")
