"""Retention rules and the attempts of a dead letter, read from its audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.tasks.model import EventType, TaskEvent, TaskStatus
from services.tasks.operations import RetentionPolicy, StatusRule, attempt_errors

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def event(kind: EventType, message: str = "", minute: int = 0) -> TaskEvent:
    return TaskEvent(
        id=minute,
        task_id="t",
        type=kind,
        from_status=None,
        to_status=TaskStatus.FAILED,
        progress=0,
        message=message,
        request_id="",
        created_at=NOW + timedelta(minutes=minute),
    )


def test_default_policy_removes_failed_after_48_hours_and_keeps_the_rest() -> None:
    (rule,) = RetentionPolicy().active()
    assert rule.status is TaskStatus.FAILED
    assert rule.cutoff(NOW) == NOW - timedelta(hours=48)
    assert StatusRule(TaskStatus.COMPLETED).cutoff(NOW) is None
    assert RetentionPolicy(rules=(StatusRule(TaskStatus.COMPLETED),)).active() == ()


def test_each_attempt_keeps_its_last_error() -> None:
    trail = [
        event(EventType.CREATED),
        event(EventType.QUEUED, "job 1"),
        event(EventType.STARTED, "worker a", 1),
        event(EventType.PROGRESS, "fetching", 2),
        event(EventType.REQUEUED, "lost by the queue", 3),
        event(EventType.FAILED, "collateral unreachable", 4),
        event(EventType.RETRIED, "retried by an operator", 5),
        event(EventType.STARTED, "worker b", 6),
        event(EventType.FAILED, "gave up after 2 attempts", 7),
    ]
    found = [(a.attempt, a.error) for a in attempt_errors(trail)]
    assert found == [(1, "collateral unreachable"), (2, "gave up after 2 attempts")]
