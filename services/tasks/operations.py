"""Operator actions on tasks, the domain (pure, no I/O): the retention policy,
and each dead letter's attempts read from its audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import EventType, TaskEvent, TaskStatus

RETAINED_STATUSES = (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELLED)


@dataclass(frozen=True)
class StatusRule:
    """How long, and how many, finished tasks of one status are kept (0: no bound)."""

    status: TaskStatus
    max_age_seconds: float = 0.0
    max_count: int = 0

    def cutoff(self, now: datetime) -> datetime | None:
        """Tasks finished before this are removed; None when age is unbounded."""
        return now - timedelta(seconds=self.max_age_seconds) if self.max_age_seconds else None

    def age_reason(self) -> str:
        return f"{self.status.value} older than {self.max_age_seconds:g} s"

    def count_reason(self) -> str:
        return f"{self.status.value} beyond the newest {self.max_count}"


@dataclass(frozen=True)
class RetentionPolicy:
    """Defaults are the reference system's: failed tasks go after 48 h, the rest stay."""

    rules: tuple[StatusRule, ...] = (StatusRule(TaskStatus.FAILED, max_age_seconds=48 * 3600),)
    batch_size: int = 500

    def active(self) -> tuple[StatusRule, ...]:
        return tuple(r for r in self.rules if r.max_age_seconds or r.max_count)


@dataclass(frozen=True)
class AttemptError:
    attempt: int
    error: str
    at: datetime


def attempt_errors(events: Sequence[TaskEvent]) -> list[AttemptError]:
    """The last error of each attempt, oldest first. An attempt begins at each
    `started` event; its error is the last message of a failure-like event in it
    (failed, requeued, or a non-progress event that carries a message)."""
    found: dict[int, AttemptError] = {}
    attempt = 0
    for event in events:
        if event.type is EventType.STARTED:
            attempt += 1
            continue
        if event.type in (
            EventType.PROGRESS,
            EventType.CREATED,
            EventType.QUEUED,
            EventType.RETRIED,
        ):
            continue
        if event.type is EventType.COMPLETED or not event.message:
            continue
        found[attempt] = AttemptError(attempt, event.message, event.created_at)
    return [found[key] for key in sorted(found)]
