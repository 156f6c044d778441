"""The queue's vocabulary: jobs, their outcomes, the queue's status and its workers.

Pure data, no I/O. A job carries only the task id, the run number and when its
first transient fault happened; the verification service reads the task's
inputs itself (TaskWorkerService.GetTaskInputs).
"""

from __future__ import annotations

import enum
import json
import os
import re
import socket
import uuid
from dataclasses import dataclass, field

from .errors import InvalidTaskId

# Task ids are UUIDs from the tasks service; accept any sane token (they end up
# in Redis keys and logs), reject the rest.
_TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def validate_task_id(task_id: str) -> str:
    if not task_id:
        raise InvalidTaskId("is required")
    if not _TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidTaskId("must be 1-128 characters of [A-Za-z0-9._:-]")
    return task_id


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Job:
    """One run of one task. `attempt` counts the job's runs from 1; retries carry
    the same job id. `request_id` is the id of the request that enqueued the task,
    so the worker's calls and log lines join the trace that created it.
    `deliveries` counts the workers this run was handed to (more than 1 after a
    worker died with it). `first_fault_at` (Unix seconds, 0 for none) is when the
    job's first transient fault happened: the retry budget counts from it."""

    job_id: str
    task_id: str
    attempt: int = 1
    request_id: str = ""
    deliveries: int = 1
    first_fault_at: float = 0.0

    def retried(self, result: JobResult) -> Job:
        """The job to run again after a RETRY result."""
        attempt = self.attempt if result.same_attempt else self.attempt + 1
        first_fault_at = result.first_fault_at or self.first_fault_at
        return Job(self.job_id, self.task_id, attempt, self.request_id, 1, first_fault_at)


class Outcome(enum.Enum):
    """What became of a job run."""

    # A verification outcome was recorded (CompleteTask), passed or not.
    COMPLETED = "completed"
    # An error was recorded (FailTask): a final error, or retries exhausted.
    FAILED = "failed"
    # Nothing to do: the task is cancelled, finished or gone.
    SKIPPED = "skipped"
    # A transient error: run the job again after `delay_seconds`.
    RETRY = "retry"


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    detail: str = ""
    delay_seconds: float = 0.0
    # RETRY only: put the job back without counting an attempt (the task was
    # held by another worker, not tried).
    same_attempt: bool = False
    # RETRY only: when the first transient fault of this job happened (Unix
    # seconds), carried to the next run for the retry budget.
    first_fault_at: float = 0.0


class Admission(enum.Enum):
    """Whether a delivered job may run (the worker's duplicate guard)."""

    RUN = "run"
    # The message belongs to a job that is no longer the task's current job.
    STALE = "stale"
    # Another worker is running the task right now.
    BUSY = "busy"


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    already_enqueued: bool
    # True when the queue was full and nothing was added (job_id is empty).
    full: bool = False


class JobState(enum.Enum):
    """Where a job is (ListJobs). FAILED jobs are failed tasks, read from the tasks service."""

    WAITING = "waiting"
    ACTIVE = "active"
    DELAYED = "delayed"
    FAILED = "failed"


@dataclass(frozen=True)
class JobView:
    """A job as ListJobs and GetJob show it (times are Unix seconds, 0 for unset).
    `ref` is the backend's handle to act on it (the Redis stream entry id of a
    waiting job, the delayed set's member of a delayed one; unused embedded)."""

    job: Job
    state: JobState
    queued_at: float = 0.0
    run_at: float = 0.0
    worker: str = ""
    deliveries: int = 0
    error: str = ""
    finished_at: float = 0.0
    ref: bytes | str = ""


@dataclass(frozen=True)
class JobPage:
    """One page of a state's jobs; `after` is the backend's cursor for the
    next page ("" on the last)."""

    jobs: list[JobView]
    after: str = ""


class WorkerState(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class QueueStatusView:
    queue_name: str
    paused: bool
    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    workers_online: int
    concurrency: int
    backend: str
    # Why online workers take no jobs, one line per distinct reason.
    idle_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as ListWorkers shows it (times are Unix seconds)."""

    id: str
    host: str
    pid: int
    started_at: float
    last_heartbeat_at: float
    state: WorkerState
    jobs_in_hand: tuple[str, ...]
    concurrency: int
    processed: int
    # Why it takes no jobs now ("" while it does).
    idle_reason: str = ""


@dataclass
class WorkerRecord:
    """A live worker's own bookkeeping, published with every heartbeat."""

    id: str
    host: str
    pid: int
    started_at: float
    concurrency: int
    jobs_in_hand: set[str] = field(default_factory=set)
    processed: int = 0
    idle_reason: str = ""

    @classmethod
    def create(cls, concurrency: int, started_at: float, suffix: str = "") -> WorkerRecord:
        host = socket.gethostname()
        pid = os.getpid()
        tail = suffix or uuid.uuid4().hex[:6]
        return cls(f"{host}-{pid}-{tail}", host, pid, started_at, concurrency)

    def info(self, heartbeat_at: float, state: WorkerState) -> WorkerInfo:
        """The record as ListWorkers shows it."""
        return WorkerInfo(
            id=self.id,
            host=self.host,
            pid=self.pid,
            started_at=self.started_at,
            last_heartbeat_at=heartbeat_at,
            state=state,
            jobs_in_hand=tuple(sorted(self.jobs_in_hand)),
            concurrency=self.concurrency,
            processed=self.processed,
            idle_reason=self.idle_reason,
        )

    def to_json(self, heartbeat_at: float) -> str:
        return json.dumps(
            {
                "id": self.id,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "last_heartbeat_at": heartbeat_at,
                "jobs_in_hand": sorted(self.jobs_in_hand),
                "concurrency": self.concurrency,
                "processed": self.processed,
                "idle_reason": self.idle_reason,
            },
            separators=(",", ":"),
        )


def worker_info_from_json(text: str | bytes, state: WorkerState) -> WorkerInfo:
    data = json.loads(text)
    return WorkerInfo(
        id=str(data["id"]),
        host=str(data.get("host", "")),
        pid=int(data.get("pid", 0)),
        started_at=float(data.get("started_at", 0.0)),
        last_heartbeat_at=float(data.get("last_heartbeat_at", 0.0)),
        state=state,
        jobs_in_hand=tuple(str(t) for t in data.get("jobs_in_hand", ())),
        concurrency=int(data.get("concurrency", 0)),
        processed=int(data.get("processed", 0)),
        idle_reason=str(data.get("idle_reason", "")),
    )
