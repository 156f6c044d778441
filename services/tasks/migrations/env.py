"""Alembic environment of the tasks store, configured programmatically by
services.tasks.migrate (no alembic.ini). The same migrations run on PostgreSQL
and SQLite (batch mode, so ALTERs work on SQLite too)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from services.tasks.tables import metadata

# Serialises concurrent `migrate` runs (several service instances starting at once).
_PG_MIGRATION_LOCK = 7_341_002


def run_migrations_online() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: sa.Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=is_sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
