"""inline evidence compressed with lz4 instead of pglz (PostgreSQL)

A task's inline evidence (about 38 KB of JSON for a dstack quote with its
event log) is TOASTed: compressed when written by CreateTask, decompressed
when read by GetTaskInputs. With PostgreSQL's default pglz that cost 1-2 ms
of the server's CPU per insert on the shared 2-core machine, lz4 about a
third of it, for a slightly smaller row. Rows written before keep pglz (both
read back alike). Skipped where the server was built without lz4, and on
SQLite (no TOAST).

Revision ID: 0006_evidence_lz4
Revises: 0005_task_runs
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_evidence_lz4"
down_revision = "0005_task_runs"
branch_labels = None
depends_on = None

_HAS_LZ4 = sa.text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not bind.execute(_HAS_LZ4).scalar():
        return
    op.execute(f"ALTER TABLE tasks ALTER COLUMN evidence SET COMPRESSION {method}")


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
