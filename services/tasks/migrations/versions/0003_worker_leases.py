"""the worker path: WAITING tasks (wait_reason, next_attempt_at) and the queue's durable state

Revision ID: 0003_worker_leases
Revises: 0002_apps
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.tasks.tables import UtcDateTime

revision = "0003_worker_leases"
down_revision = "0002_apps"
branch_labels = None
depends_on = None

_OLD = "'pending', 'queued', 'active', 'completed', 'failed', 'cancelled'"
_NEW = _OLD + ", 'waiting'"


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table to change a CHECK constraint.
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("wait_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("next_attempt_at", UtcDateTime(), nullable=True))
        batch.drop_constraint("ck_tasks_status", type_="check")
        batch.create_check_constraint("ck_tasks_status", f"status IN ({_NEW})")
    op.create_table(
        "queue_state",
        sa.Column("queue_name", sa.String(128), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(256), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("queue_state")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("ck_tasks_status", type_="check")
        batch.create_check_constraint("ck_tasks_status", f"status IN ({_OLD})")
        batch.drop_column("next_attempt_at")
        batch.drop_column("wait_reason")
