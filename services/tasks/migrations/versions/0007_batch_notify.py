"""one NOTIFY per statement of task_events rows, naming every task it changed

The audit trigger notified once per row: a batch of 64 started tasks was 64
trigger calls and 64 notifications for each listening service instance to
read and dispatch. A statement-level trigger with the statement's new rows
(a transition table) sends their distinct task ids, comma-separated, at most
200 a notification (the payload limit is 8000 bytes). A listener that knows
only the old payload (a single id) misses the wake-ups of batches during a
rolling upgrade. PostgreSQL only: SQLite wakes watchers in-process.

Revision ID: 0007_batch_notify
Revises: 0006_evidence_lz4
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0007_batch_notify"
down_revision = "0006_evidence_lz4"
branch_labels = None
depends_on = None

# Ids per notification: 200 uuids and their commas are 7,399 bytes.
_IDS_PER_NOTIFY = 200


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if not _postgresql():
        return
    op.execute(
        f"""
        CREATE FUNCTION task_events_notify_batch() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            ids text;
        BEGIN
            FOR ids IN
                SELECT string_agg(task_id::text, ',')
                FROM (
                    SELECT task_id, (row_number() OVER () - 1) / {_IDS_PER_NOTIFY} AS chunk
                    FROM (SELECT DISTINCT task_id FROM new_events) AS distinct_ids
                ) AS chunked
                GROUP BY chunk
            LOOP
                PERFORM pg_notify('task_events', ids);
            END LOOP;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER task_events_notify ON task_events")
    op.execute("DROP FUNCTION task_events_notify()")
    op.execute(
        """
        CREATE TRIGGER task_events_notify AFTER INSERT ON task_events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION task_events_notify_batch()
        """
    )


def downgrade() -> None:
    if not _postgresql():
        return
    op.execute("DROP TRIGGER task_events_notify ON task_events")
    op.execute("DROP FUNCTION task_events_notify_batch()")
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
