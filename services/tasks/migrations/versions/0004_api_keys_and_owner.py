"""api_keys (hashes only), and the owner of each task for per-owner listing

Revision ID: 0004_api_keys
Revises: 0003_worker_leases
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.tasks.tables import UtcDateTime

revision = "0004_api_keys"
down_revision = "0003_worker_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("scopes", sa.String(256), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("owner", sa.String(128), nullable=False, server_default=""))
    # A submitter's list: its own tasks newest first, by keyset.
    op.create_index("ix_tasks_owner_created", "tasks", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_owner_created", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("owner")
    op.drop_table("api_keys")
