"""runs of a task: the attempts made before the current run began

A run starts with a task's first attempt and again when an operator retries
it (RetryTask). The attempts of the current run that started and never
finished are the ones whose stored report the verification engine may adopt
(GetTaskInputs' earlier_attempts); a retried task is verified anew.

Revision ID: 0005_task_runs
Revises: 0004_api_keys
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_task_runs"
down_revision = "0004_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("run_base_attempt", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("run_base_attempt")
