"""The one interface of the queue, with two implementations selected by
configuration: `redis_backend.RedisQueue` (REDIS_URL set) and
`embedded.EmbeddedQueue` (REDIS_URL empty, the reference system's "sync
fallback").

Both modes have the same shape: a backend (this interface), a worker
(`consumer.BatchWorker`, which takes up to its free slots of jobs at once and
runs them through the pipeline) and background jobs (heartbeat, pause watch,
maintenance). The only difference is where the worker runs: in its own process
on Redis, inside the queue service in the embedded mode (`in_process_workers`).

Task ids reach a backend already validated (server.py checks them once).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from .model import (
    Admission,
    EnqueueResult,
    Job,
    JobPage,
    JobResult,
    JobState,
    JobView,
    QueueStatusView,
    WorkerInfo,
    WorkerRecord,
)


@dataclass(frozen=True)
class Delivery:
    """A job as a worker received it. `ref` is the backend's handle (the Redis
    stream entry id; the embedded queue's own sequence number). `queued_at`
    (Unix seconds) is when its entry was added (embedded only)."""

    job: Job
    ref: str = ""
    queued_at: float = 0.0


@dataclass(frozen=True)
class Settlement:
    """One run's result, to record on the backend. `holder` is the run's own
    duplicate-guard token (see `admit`)."""

    delivery: Delivery
    result: JobResult
    holder: str


class QueueBackend(abc.ABC):
    """A queue of verification jobs with pause/resume, counts and a worker registry."""

    kind: ClassVar[str]
    # The name of the dependency probe (health, /health/detailed).
    probe_name: ClassVar[str]
    # True when the queue service itself runs the workers (the jobs live in its memory).
    in_process_workers: ClassVar[bool]

    @property
    @abc.abstractmethod
    def queue_name(self) -> str: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare the store (create the consumer group)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def probe(self) -> str:
        """The backend's version for health; raises when it is unreachable."""

    # --- service side -------------------------------------------------------

    @abc.abstractmethod
    async def enqueue_many(self, task_ids: Sequence[str]) -> list[EnqueueResult]:
        """Queue a job for each task unless one is waiting, delayed or in hand;
        one result per task, in order. A full queue is that item's `full`."""

    @abc.abstractmethod
    async def status(self) -> QueueStatusView: ...

    @abc.abstractmethod
    async def set_paused(self, paused: bool) -> None:
        """Set the flag every worker follows (the durable copy is the tasks
        database's; this one is what the workers watch)."""

    @abc.abstractmethod
    async def read_paused(self) -> bool:
        """The flag the workers follow, as set by `set_paused`."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]: ...

    @abc.abstractmethod
    async def claim_epoch(self) -> bool:
        """True when the queue's data was lost since the last call (a Redis
        flush or restart without persistence, or a fresh embedded queue): the
        caller then enqueues every unfinished task again."""

    @abc.abstractmethod
    async def drop_epoch(self) -> None:
        """Undo `claim_epoch` (the requeue it called for did not finish)."""

    # --- job actions (operators) ---------------------------------------------

    @abc.abstractmethod
    async def list_jobs(self, state: JobState, after: str, limit: int) -> JobPage:
        """Up to `limit` jobs in `state` (WAITING, ACTIVE or DELAYED; the
        backend holds no finished jobs) past the cursor `after` ("" from the
        start)."""

    @abc.abstractmethod
    async def current_job_id(self, task_id: str) -> str | None:
        """The id of the task's job while the queue holds one (waiting, active or delayed)."""

    @abc.abstractmethod
    async def discard(self, view: JobView) -> bool:
        """Remove a WAITING job (`list_jobs`'s view of it) and the task's job
        record; False when it is no longer waiting."""

    @abc.abstractmethod
    async def promote(self, view: JobView) -> bool:
        """Move a DELAYED job to the waiting jobs now; False when it is no longer delayed."""

    # --- worker side --------------------------------------------------------

    @abc.abstractmethod
    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        """Up to `count` jobs for this backend's worker, waiting at most
        `block_seconds` for the first one."""

    @abc.abstractmethod
    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return jobs taken but not run (the queue was paused meanwhile)."""

    @abc.abstractmethod
    async def admit_many(
        self, deliveries: Sequence[Delivery], holders: Sequence[str]
    ) -> list[Admission]:
        """Decide for each delivered job whether it may run (the duplicate
        guard); when it may, its holder (unique to the run) holds the task
        until settled."""

    @abc.abstractmethod
    async def settle_many(self, settlements: Sequence[Settlement]) -> None:
        """Record the runs' results: acknowledge each delivery, schedule the
        retry or clear the job."""

    @abc.abstractmethod
    async def heartbeat(self, record: WorkerRecord) -> None:
        """Publish the worker's record and keep its jobs in hand claimed."""

    @abc.abstractmethod
    async def leave(self, record: WorkerRecord) -> int:
        """At a clean exit: give back what the worker still holds, drop its
        record. Returns how many jobs went back."""

    @abc.abstractmethod
    async def watch_pause(self, on_change: Callable[[bool], None]) -> None:
        """Follow the paused flag, calling `on_change` at least once a second."""

    @abc.abstractmethod
    async def maintain(self) -> None:
        """One maintenance tick: due retries back on the queue, and the store's
        housekeeping now and then."""
