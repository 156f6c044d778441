"""SQLAlchemy Core tables of the tasks store (PostgreSQL, or SQLite embedded).

The schema itself is created by the Alembic migrations in migrations/; these
definitions are what the store's queries are built from and must match them
(tests/integration/tasks checks that the migrated schema has every column).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

metadata = sa.MetaData()

# The channel the task_events trigger notifies on (PostgreSQL), once per statement;
# the payload is the ids of the tasks it changed, comma-separated.
NOTIFY_CHANNEL = "task_events"


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


TaskId = sa.Uuid(as_uuid=False)
# SQLite only autoincrements an INTEGER PRIMARY KEY.
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", TaskId, primary_key=True),
    sa.Column("job_name", sa.String(64), nullable=False),
    sa.Column("queue_job_id", sa.String(256), nullable=False, server_default=""),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("app_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("app_name", sa.String(256), nullable=False, server_default=""),
    sa.Column("app_config_type", sa.String(16), nullable=False),
    sa.Column("contract_address", sa.String(42), nullable=False, server_default=""),
    sa.Column("model_or_domain", sa.String(253), nullable=False, server_default=""),
    sa.Column("app_metadata", sa.JSON(), nullable=False),
    sa.Column("verification_flags", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.SmallInteger(), nullable=False, server_default="0"),
    sa.Column("error_message", sa.Text(), nullable=False, server_default=""),
    sa.Column("check_results", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("verdict", sa.String(16), nullable=False, server_default=""),
    sa.Column("tcb_status", sa.String(64), nullable=False, server_default=""),
    sa.Column("s3_bucket", sa.String(255), nullable=False, server_default=""),
    sa.Column("s3_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("s3_filename", sa.String(255), nullable=False, server_default=""),
    sa.Column("expected_compose_hash", sa.String(64), nullable=False, server_default=""),
    sa.Column("evaluation_time", UtcDateTime(), nullable=True),
    sa.Column("evidence", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    # When the queue last acknowledged the task (the reconciler's clock).
    sa.Column("enqueued_at", UtcDateTime(), nullable=True),
    # "api" or "scheduler" (migration 0002_apps).
    sa.Column("created_by", sa.String(16), nullable=False, server_default="api"),
    # Why a WAITING task waits (the transient fault), and when it runs again.
    sa.Column("wait_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
    # Whose task it is: the creating API key's owner ("" before authentication).
    sa.Column("owner", sa.String(128), nullable=False, server_default=""),
    # The attempts made before the current run began: 0, or `attempts` at the
    # last RetryTask (migration 0005_task_runs). The run's earlier attempts are
    # run_base_attempt + 1 .. attempts - 1.
    sa.Column("run_base_attempt", sa.Integer(), nullable=False, server_default="0"),
)

# The queue's durable state (QueueStateService): it survives a Redis flush.
queue_state = sa.Table(
    "queue_state",
    metadata,
    sa.Column("queue_name", sa.String(128), primary_key=True),
    sa.Column("paused", sa.Boolean(), nullable=False),
    sa.Column("changed_at", UtcDateTime(), nullable=False),
    sa.Column("changed_by", sa.String(256), nullable=False, server_default=""),
)

task_events = sa.Table(
    "task_events",
    metadata,
    sa.Column("id", EventId, primary_key=True, autoincrement=True),
    sa.Column("task_id", TaskId, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("progress", sa.SmallInteger(), nullable=False),
    sa.Column("message", sa.Text(), nullable=False, server_default=""),
    sa.Column("request_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)


# Apps re-verified on a schedule (migration 0002_apps). `id` is the dstack app id.
apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, server_default=""),
    sa.Column("app_config_type", sa.String(16), nullable=False),
    sa.Column("contract_address", sa.String(42), nullable=False, server_default=""),
    sa.Column("model_or_domain", sa.String(253), nullable=False, server_default=""),
    sa.Column("verification_flags", sa.JSON(), nullable=False),
    sa.Column("expected_compose_hash", sa.String(64), nullable=False, server_default=""),
    sa.Column("interval_seconds", sa.Integer(), nullable=True),
    sa.Column("retry_interval_seconds", sa.Integer(), nullable=True),
    sa.Column("cron", sa.String(128), nullable=False, server_default=""),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("schedule_paused", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("source", sa.String(16), nullable=False),
    # The latest task the scheduler (or a trigger) created; its row gives the status.
    sa.Column("latest_task_id", TaskId, nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# What retention removed: the audit trail of a task outlives its row (0002_apps).
retention_audit = sa.Table(
    "retention_audit",
    metadata,
    sa.Column("id", EventId, primary_key=True, autoincrement=True),
    sa.Column("task_id", TaskId, nullable=False),
    sa.Column("app_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("s3_key", sa.String(1024), nullable=False, server_default=""),
    sa.Column("reason", sa.String(256), nullable=False),
    sa.Column("task_created_at", UtcDateTime(), nullable=False),
    sa.Column("task_finished_at", UtcDateTime(), nullable=True),
    sa.Column("removed_at", UtcDateTime(), nullable=False),
)

# API keys (services/tasks/keys_store.py): only the SHA-256 of a key is kept.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    # Space-separated scope names.
    sa.Column("scopes", sa.String(256), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("last_used_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)


class HasEvidence(FunctionElement[bool]):
    """`evidence IS NOT NULL`, without reading the evidence (a FunctionElement,
    so statements using it keep SQLAlchemy's compiled-statement cache)."""

    type = sa.Boolean()
    inherit_cache = True
    name = "has_evidence"


@compiles(HasEvidence)
def _has_evidence(element: HasEvidence, compiler: Any, **kw: Any) -> str:
    return "tasks.evidence IS NOT NULL"


@compiles(HasEvidence, "sqlite")
def _has_evidence_sqlite(element: HasEvidence, compiler: Any, **kw: Any) -> str:
    # SQLite 3.40 evaluates `col IS NOT NULL` wrongly in a RETURNING clause when
    # the column is NULL (true instead of false); length() is evaluated right.
    return "(coalesce(length(tasks.evidence), 0) > 0)"


# Every column but the evidence (the BASIC view and lists never read it).
BASIC_COLUMNS: list[sa.ColumnElement[Any]] = [
    *(column for column in tasks.c if column.name != "evidence"),
    HasEvidence().label("has_evidence"),
]
