"""apps (scheduled re-verification), tasks.created_by, the retention audit table

Revision ID: 0002_apps
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.tasks.tables import UtcDateTime

revision = "0002_apps"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    task_id = sa.Uuid(as_uuid=False)
    op.create_table(
        "apps",
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
        sa.Column("latest_task_id", task_id, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('enabled', 'disabled', 'deleted')", name="ck_apps_state"),
    )
    # The scheduler reads the enabled apps; ListApps filters by state, keyset on id.
    op.create_index("ix_apps_state_id", "apps", ["state", "id"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("created_by", sa.String(16), nullable=False, server_default="api")
        )
    # Retention finds finished tasks by status and age.
    op.create_index("ix_tasks_status_finished", "tasks", ["status", "finished_at"])
    op.create_table(
        "retention_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("task_id", task_id, nullable=False),
        sa.Column("app_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("s3_key", sa.String(1024), nullable=False, server_default=""),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("task_created_at", UtcDateTime(), nullable=False),
        sa.Column("task_finished_at", UtcDateTime(), nullable=True),
        sa.Column("removed_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_retention_audit_removed", "retention_audit", ["removed_at"])


def downgrade() -> None:
    op.drop_table("retention_audit")
    op.drop_index("ix_tasks_status_finished", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("created_by")
    op.drop_index("ix_apps_state_id", "apps")
    op.drop_table("apps")
