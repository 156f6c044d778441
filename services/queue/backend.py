"""The one interface of the queue, with two implementations selected by
configuration: `redis_backend.RedisQueue` (REDIS_URL set) and
`embedded.EmbeddedQueue` (REDIS_URL empty, the reference system's "sync
fallback").

The service side (EnqueueTask, status, pause/resume, workers) and the worker
side (admitting a delivered job, settling its result) live on the same object,
so both modes share the job runner and the pipeline.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from .model import Admission, EnqueueResult, Job, JobResult, QueueStatusView, WorkerInfo


@dataclass(frozen=True)
class Delivery:
    """A job as a worker received it. `ref` is the backend's handle (the Redis
    stream entry id; empty in the embedded mode)."""

    job: Job
    ref: str = ""


class QueueBackend(abc.ABC):
    """A queue of verification jobs with pause/resume, counts and a worker registry."""

    kind: ClassVar[str]

    @property
    @abc.abstractmethod
    def queue_name(self) -> str: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare the store (create the consumer group, load the paused flag)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def probe(self) -> str:
        """The backend's version for health; raises when it is unreachable."""

    # --- service side -------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, task_id: str) -> EnqueueResult:
        """Queue a job for the task unless one is waiting, delayed or in hand."""

    @abc.abstractmethod
    async def status(self) -> QueueStatusView: ...

    @abc.abstractmethod
    async def pause(self) -> QueueStatusView:
        """Stop every worker from taking new jobs; the flag outlives restarts."""

    @abc.abstractmethod
    async def resume(self) -> QueueStatusView: ...

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]: ...

    # --- worker side --------------------------------------------------------

    @abc.abstractmethod
    async def admit(self, delivery: Delivery, holder: str) -> Admission:
        """Decide whether a delivered job may run (the duplicate guard); when it
        may, `holder` (unique to this run) holds the task until settled."""

    @abc.abstractmethod
    async def settle(self, delivery: Delivery, result: JobResult, holder: str) -> None:
        """Record a run's result atomically: acknowledge the delivery, schedule
        the retry or clear the job, count it."""
