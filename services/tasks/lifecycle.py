"""The task lifecycle: which status each operation moves a task from and to,
which repeated calls are no-ops, and how a report summary decides the outcome.
Pure: the store turns these rules into guarded UPDATEs.

    PENDING --queued--> QUEUED --start--> ACTIVE --complete--> COMPLETED | FAILED
       |                  |                 | ^ \\--fail--> FAILED
       |                  |           defer | | start
       |                  |                 v |
       |                  |               WAITING --fail--> FAILED
       +------------------+-----------------+--cancel--> CANCELLED

Start also accepts PENDING (the queue may deliver before its ack is
recorded) and ACTIVE (a redelivered job: a new attempt). Each start opens a
new attempt (a lease): the calls of the worker path name their attempt, and
one that is not the task's current attempt is stale (`lease_outcome`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidTransition
from .model import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    EventType,
    ReportSummary,
    Task,
    TaskStatus,
)
from .validation import MAX_ERROR_MESSAGE


@dataclass(frozen=True)
class Transition:
    """One lifecycle operation."""

    # Verb for messages: "start", "cancel", ...
    operation: str
    # Statuses the operation changes.
    allowed_from: frozenset[TaskStatus]
    # Statuses where a repeated call is a no-op that returns the task unchanged.
    noop_from: frozenset[TaskStatus]
    event: EventType
    # Said in the error when the status refuses the operation.
    hint: str = ""

    def refuse_or_noop(self, task: Task) -> Task:
        """For a task the guarded update did not change: the no-op result, or the error."""
        if task.status in self.noop_from:
            return task
        raise InvalidTransition(task.id, task.status.value, self.operation, self.hint)


START = Transition(
    "start",
    allowed_from=frozenset(UNFINISHED_STATUSES),
    noop_from=frozenset(),
    event=EventType.STARTED,
    hint="a finished task is never run again",
)
CANCEL = Transition(
    "cancel",
    allowed_from=frozenset(UNFINISHED_STATUSES),
    noop_from=frozenset({TaskStatus.CANCELLED}),
    event=EventType.CANCELLED,
    hint="only pending, queued or active tasks can be cancelled",
)
COMPLETE = Transition(
    "complete",
    allowed_from=frozenset({TaskStatus.ACTIVE}),
    noop_from=FINISHED_STATUSES,
    event=EventType.COMPLETED,
    hint="StartTasks first",
)
FAIL = Transition(
    "fail",
    allowed_from=frozenset(UNFINISHED_STATUSES),
    noop_from=FINISHED_STATUSES,
    event=EventType.FAILED,
)
PROGRESS = Transition(
    "update progress",
    allowed_from=frozenset({TaskStatus.ACTIVE}),
    # An ACTIVE task the update did not change already had that progress or more.
    noop_from=frozenset({TaskStatus.ACTIVE}),
    event=EventType.PROGRESS,
    hint="only active tasks make progress",
)
# A transient fault interrupted an attempt: it waits to be retried.
DEFER = Transition(
    "defer",
    allowed_from=frozenset({TaskStatus.ACTIVE}),
    noop_from=frozenset({TaskStatus.WAITING}),
    event=EventType.WAITING,
    hint="only an active task waits",
)
# The queue acknowledged a batch (the dispatcher): PENDING becomes QUEUED; a
# task past PENDING records the job id, with a `requeued` event only when the
# queue had lost it (see dispatch.py). A finished task records nothing.
ENQUEUE = Transition(
    "enqueue",
    allowed_from=frozenset(UNFINISHED_STATUSES),
    noop_from=frozenset(TaskStatus),
    event=EventType.QUEUED,
)

# The reconciler re-sent a QUEUED, ACTIVE or WAITING task the queue had lost.
REQUEUE = Transition(
    "requeue",
    allowed_from=frozenset({TaskStatus.QUEUED, TaskStatus.ACTIVE, TaskStatus.WAITING}),
    noop_from=frozenset(TaskStatus),
    event=EventType.REQUEUED,
)


class Refusal(enum.Enum):
    """Why a batch item of the worker path was not applied."""

    NOT_FOUND = "not_found"
    # The call's attempt is not the task's current one (a newer start overtook it).
    STALE = "stale"
    # The task's status does not allow it (finished, cancelled, not started).
    STATUS = "status"


def lease_outcome(
    transition: Transition,
    attempt: int,
    found: tuple[TaskStatus, int] | None,
    *,
    repeated: bool = False,
) -> Refusal | None:
    """For an item the guarded update did not apply: None when it is an
    idempotent repeat (already applied for this attempt: `repeated`, the caller
    knowing what the current row shows), else why it was refused. `found` is
    the task's (status, current attempt), None when there is no such task."""
    if found is None:
        return Refusal.NOT_FOUND
    status, current = found
    if attempt != current:
        return Refusal.STALE
    if repeated and status in transition.noop_from:
        return None
    return Refusal.STATUS


def earlier_attempts(run_base_attempt: int, attempt: int) -> tuple[int, ...]:
    """The attempts of the current run before `attempt`, ascending. A run
    starts with the task's first attempt and again at an operator's RetryTask
    (`run_base_attempt`: the attempts made before it). None of them finished
    the task (a finished task is not started again within its run), so a
    report one of them stored is this run's verification: the engine may adopt
    it instead of verifying again. A retried task's earlier runs are never
    named: an operator retry must verify anew."""
    first = max(run_base_attempt, 0) + 1
    return tuple(range(first, attempt))


def outcome_of(summary: ReportSummary) -> tuple[TaskStatus, str]:
    """The engine's signed verdict as the task's outcome, not recomputed:
    COMPLETED when PASSED, else FAILED naming the checks that did not pass
    (those that failed or erred; the others when none did)."""
    if summary.verdict == "passed":
        return TaskStatus.COMPLETED, ""
    named = [r for r in summary.checks if r.status in ("failed", "error")] or [
        r for r in summary.checks if r.status != "passed"
    ]
    reasons = "; ".join(_describe(r.check, r.status, r.reason) for r in named)
    return TaskStatus.FAILED, truncate(
        "verification failed: " + (reasons or "the engine's verdict is FAILED")
    )


def _describe(name: str, status: str, reason: str) -> str:
    return f"{name} {status}: {reason}" if reason else f"{name} {status}"


def truncate(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    if len(message) <= limit:
        return message
    return message[: limit - 3] + "..."


def percentile_cont(sorted_values: Sequence[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    if not sorted_values:
        return 0.0
    position = fraction * (len(sorted_values) - 1)
    lower = int(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * weight
