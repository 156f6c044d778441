"""The task lifecycle: which status each operation moves a task from and to,
which repeated calls are no-ops, and how a report summary decides the outcome.
Pure: the store turns these rules into guarded UPDATEs.

    PENDING --queued--> QUEUED --start--> ACTIVE --complete--> COMPLETED | FAILED
       |                  |                 |  \\--fail--> FAILED
       +------------------+-----------------+--cancel--> CANCELLED

StartTask also accepts PENDING (the queue may deliver before its ack is
recorded) and ACTIVE (a redelivered job: a new attempt).
"""

from __future__ import annotations

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
    VerificationFlags,
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
    hint="StartTask first",
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
# The queue acknowledged the task: PENDING becomes QUEUED. In any other status
# the job id is recorded without a status change (the worker may have been faster).
MARK_QUEUED = Transition(
    "mark queued",
    allowed_from=frozenset({TaskStatus.PENDING}),
    noop_from=frozenset(TaskStatus),
    event=EventType.QUEUED,
)

# The reconciler re-sent a QUEUED or ACTIVE task the queue had lost.
REQUEUE = Transition(
    "requeue",
    allowed_from=frozenset({TaskStatus.QUEUED, TaskStatus.ACTIVE}),
    noop_from=frozenset(TaskStatus),
    event=EventType.REQUEUED,
)


def decide_outcome(summary: ReportSummary, flags: VerificationFlags) -> tuple[TaskStatus, str]:
    """COMPLETED only when the verdict passed AND every enabled check reported
    PASSED; else FAILED with each failing check and its reason. The verdict alone
    is not trusted: a PASSED verdict with an enabled check skipped, missing or in
    error still fails the task."""
    reported = {result.check: result for result in summary.checks}
    enabled = flags.enabled()
    failures: list[str] = []
    for name in enabled:
        result = reported.get(name)
        if result is None:
            failures.append(f"{name}: enabled but not reported")
        elif result.status != "passed":
            failures.append(_describe(name, result.status, result.reason))
    for result in summary.checks:
        if result.check not in enabled and result.status in ("failed", "error"):
            failures.append(_describe(result.check, result.status, result.reason))
    if summary.verdict != "passed" and not failures:
        failures.append("the verdict is FAILED though no check failed")
    if not failures:
        return TaskStatus.COMPLETED, ""
    return TaskStatus.FAILED, truncate("verification failed: " + "; ".join(failures))


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
