"""Plain data types of the tasks domain (no I/O, no grpc, no SQL).

The gRPC layer maps protos to and from these (services.tasks.mapping); the
store reads and writes them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.attestation import VerificationFlags

# VerificationFlags is the one of shared.attestation (both services read it).
__all__ = ["VerificationFlags"]


class TaskStatus(enum.StrEnum):
    """Where a task is in its lifecycle; the values are the reference system's REST values."""

    PENDING = "pending"
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A transient fault interrupted it; it is retried later (wait_reason says why).
    WAITING = "waiting"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
UNFINISHED_STATUSES = frozenset(set(TaskStatus) - FINISHED_STATUSES)


class AppConfigType(enum.StrEnum):
    """The kind of app; the values are the reference system's REST values."""

    REDPILL = "redpill"
    PHALA_CLOUD = "phala_cloud"


class TaskView(enum.Enum):
    BASIC = "basic"
    FULL = "full"


class EventType(enum.StrEnum):
    """What an audit-trail entry records."""

    CREATED = "created"
    QUEUED = "queued"
    REQUEUED = "requeued"
    STARTED = "started"
    WAITING = "waiting"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # An operator put a failed or cancelled task back to pending (RetryTask).
    RETRIED = "retried"


# What a check can report (CheckResult.status), in the proto's order.
CHECK_STATUSES: tuple[str, ...] = ("passed", "failed", "skipped", "error")


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome as the verification engine reported it."""

    check: str  # one of CHECK_NAMES
    status: str  # passed | failed | skipped | error
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "reason": self.reason,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            check=str(data.get("check", "")),
            status=str(data.get("status", "")),
            reason=str(data.get("reason", "")),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class ReportSummary:
    """What a worker reports from VerificationEngineService.Verify."""

    verdict: str  # passed | failed | "" (unspecified)
    checks: tuple[CheckResult, ...] = ()
    tcb_status: str = ""
    s3_bucket: str = ""
    s3_key: str = ""
    s3_filename: str = ""
    # What the signed summary names (the engine's; empty in an unsigned one).
    task_id: str = ""
    attempt: int = 0
    signing_key_id: str = ""


@dataclass(frozen=True)
class NewTask:
    """A validated CreateTask request, defaults filled in."""

    request_id: str | None
    app_id: str
    app_name: str
    app_config_type: AppConfigType
    contract_address: str
    model_or_domain: str
    app_metadata: dict[str, Any]
    verification_flags: VerificationFlags
    evidence: dict[str, str] | None
    expected_compose_hash: str
    evaluation_time: datetime | None
    # "api" (a client's CreateTask) or "scheduler" (an app's schedule or trigger).
    created_by: str = "api"
    # The creating key's owner; only that owner's submitters see the task.
    owner: str = ""

    @property
    def job_name(self) -> str:
        return f"verify:{self.app_config_type.value}"


@dataclass(frozen=True)
class Task:
    """One stored task."""

    id: str
    job_name: str
    queue_job_id: str
    request_id: str | None
    app_id: str
    app_name: str
    app_config_type: AppConfigType
    contract_address: str
    model_or_domain: str
    app_metadata: dict[str, Any]
    verification_flags: VerificationFlags
    status: TaskStatus
    progress: int
    error_message: str
    check_results: tuple[CheckResult, ...]
    verdict: str
    tcb_status: str
    s3_bucket: str
    s3_key: str
    s3_filename: str
    expected_compose_hash: str
    evaluation_time: datetime | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    has_evidence: bool
    # Only loaded for the FULL view and GetTaskInputs.
    evidence: dict[str, str] | None = None
    created_by: str = "api"
    # Why it is WAITING, and when it is expected to run again.
    wait_reason: str = ""
    next_attempt_at: datetime | None = None
    # The owner of the API key that created it ("" without authentication).
    owner: str = ""
    # The attempts made before the current run began (0, or `attempts` at the
    # last RetryTask): see lifecycle.earlier_attempts.
    run_base_attempt: int = 0


@dataclass(frozen=True)
class EnqueueAck:
    """The queue took a task: its job id, and whether the queue had lost it
    (a re-send of a task past PENDING that the queue did not hold)."""

    task_id: str
    job_id: str
    requeue: bool


@dataclass(frozen=True)
class Completion:
    """One verified task to record: the outcome the engine signed."""

    task_id: str
    attempt: int
    status: TaskStatus  # COMPLETED or FAILED
    error_message: str
    summary: ReportSummary


@dataclass(frozen=True)
class Failure:
    """One task to fail for a fault of its own."""

    task_id: str
    attempt: int
    error_message: str


@dataclass(frozen=True)
class Deferral:
    """One started task to put into WAITING."""

    task_id: str
    attempt: int
    reason: str
    retry_at: datetime | None


@dataclass(frozen=True)
class ProgressReport:
    """One task's progress from its worker."""

    task_id: str
    attempt: int
    progress: int
    message: str = ""


@dataclass(frozen=True)
class QueueState:
    """The durable state of one queue."""

    queue_name: str
    paused: bool
    changed_at: datetime | None
    changed_by: str
    completed: int
    failed: int


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's audit trail."""

    id: int
    task_id: str
    type: EventType
    from_status: TaskStatus | None
    to_status: TaskStatus
    progress: int
    message: str
    request_id: str
    created_at: datetime


@dataclass(frozen=True)
class ListFilter:
    """The filters of ListTasks (combined with AND)."""

    status: TaskStatus | None = None
    app_id: str = ""
    app_config_type: AppConfigType | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    # Only this owner's tasks (a submitter's list); empty: everyone's.
    owner: str = ""


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last task of the previous page."""

    created_at: datetime
    id: str


@dataclass(frozen=True)
class ListQuery:
    """A validated ListTasks request."""

    filter: ListFilter
    page_size: int
    after: Cursor | None


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    next_cursor: Cursor | None


@dataclass(frozen=True)
class TaskStats:
    total: int = 0
    by_status: dict[TaskStatus, int] = field(default_factory=dict)
    average_processing_seconds: float = 0.0
    p95_processing_seconds: float = 0.0
