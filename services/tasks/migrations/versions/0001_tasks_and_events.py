"""tasks and task_events, with the list indexes and the change notification trigger

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.tasks.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATUSES = "'pending', 'queued', 'active', 'completed', 'failed', 'cancelled'"


def upgrade() -> None:
    task_id = sa.Uuid(as_uuid=False)
    op.create_table(
        "tasks",
        sa.Column("id", task_id, primary_key=True),
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
        sa.Column("check_results", sa.JSON(), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False, server_default=""),
        sa.Column("tcb_status", sa.String(64), nullable=False, server_default=""),
        sa.Column("s3_bucket", sa.String(255), nullable=False, server_default=""),
        sa.Column("s3_key", sa.String(1024), nullable=False, server_default=""),
        sa.Column("s3_filename", sa.String(255), nullable=False, server_default=""),
        sa.Column("expected_compose_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("evaluation_time", UtcDateTime(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("enqueued_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_tasks_request_id"),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="ck_tasks_status"),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="ck_tasks_progress"),
    )
    # ListTasks is newest first, keyset on (created_at, id): one index per filter
    # serves any page depth without a sort or an OFFSET scan.
    op.create_index("ix_tasks_created", "tasks", ["created_at", "id"])
    op.create_index("ix_tasks_status_created", "tasks", ["status", "created_at", "id"])
    op.create_index("ix_tasks_app_id_created", "tasks", ["app_id", "created_at", "id"])
    op.create_index("ix_tasks_type_created", "tasks", ["app_config_type", "created_at", "id"])

    op.create_table(
        "task_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "task_id",
            task_id,
            sa.ForeignKey("tasks.id", ondelete="CASCADE", name="fk_task_events_task"),
            nullable=False,
        ),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("progress", sa.SmallInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("request_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_task_events_task", "task_events", ["task_id", "id"])

    if op.get_bind().dialect.name == "postgresql":
        # NOTIFY in the transaction of every audit event: watchers wake on commit,
        # and a rolled-back change never notifies.
        op.execute(
            """
            CREATE FUNCTION task_events_notify() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('task_events', NEW.task_id::text);
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER task_events_notify AFTER INSERT ON task_events
            FOR EACH ROW EXECUTE FUNCTION task_events_notify()
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS task_events_notify ON task_events")
        op.execute("DROP FUNCTION IF EXISTS task_events_notify()")
    op.drop_table("task_events")
    op.drop_table("tasks")
