"""The embedded queue (REDIS_URL empty): the same API in the queue service's own
process, with in-process workers (asyncio tasks) running QUEUE_CONCURRENCY jobs
at once. The reference system's "sync fallback": `make run` needs no Redis.

The paused flag is kept in a file under data_dir so it survives a restart like
the Redis flag does. Jobs live in memory: at start the service enqueues again
every QUEUED or ACTIVE task the tasks service knows (pipeline.requeue_unfinished),
so the jobs a stopped process held come back at once (enqueue is idempotent, so
re-enqueueing every unfinished task is always safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from pathlib import Path
from typing import ClassVar

from shared.config import Settings
from shared.context import current_request_id
from shared.log import get_logger

from . import policy
from .backend import Delivery, QueueBackend
from .errors import QueueFull
from .model import (
    Admission,
    EnqueueResult,
    Job,
    JobResult,
    Outcome,
    QueueStatusView,
    WorkerInfo,
    WorkerRecord,
    WorkerState,
    new_job_id,
    validate_task_id,
)
from .pipeline import JobHandler
from .runner import JobRunner

log = get_logger(__name__)


class EmbeddedQueue(QueueBackend):
    kind: ClassVar[str] = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.record = WorkerRecord.create(
            settings.queue_concurrency, started_at=time.time(), suffix="embedded"
        )
        self._waiting: deque[Delivery] = deque()
        self._delayed: list[tuple[float, int, Job]] = []  # (due, seq, job), a heap
        self._seq = itertools.count()
        self._jobs: dict[str, str] = {}  # task id -> its current job id
        self._locks: dict[str, str] = {}  # task id -> worker running it
        self._running: set[asyncio.Task[None]] = set()
        self._completed = 0
        self._failed = 0
        self._workers_started = False
        self._wake = asyncio.Event()
        self._pause_file = Path(settings.data_dir) / f"queue-{settings.queue_name}.paused"
        self._paused = self._pause_file.exists()

    @property
    def queue_name(self) -> str:
        return self.settings.queue_name

    async def start(self) -> None:
        """Nothing to prepare: the paused flag was read at construction."""

    async def close(self) -> None:
        await self.drain()

    async def drain(self) -> None:
        """Let the jobs in hand finish (within the shutdown grace), cancel the rest."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=self.settings.shutdown_grace_seconds)
        for task in list(self._running):
            task.cancel()

    async def probe(self) -> str:
        return "in-process"

    # --- service side -----------------------------------------------------------

    async def enqueue(self, task_id: str) -> EnqueueResult:
        validate_task_id(task_id)
        existing = self._jobs.get(task_id)
        if existing is not None:
            return EnqueueResult(existing, already_enqueued=True)
        if self._size() >= self.settings.queue_max_length:
            raise QueueFull(f"the queue holds {self.settings.queue_max_length} jobs")
        job = Job(new_job_id(), task_id, request_id=current_request_id())
        self._jobs[task_id] = job.job_id
        self._waiting.append(Delivery(job))
        self._wake.set()
        return EnqueueResult(job.job_id, already_enqueued=False)

    def _size(self) -> int:
        return len(self._waiting) + len(self._delayed) + len(self._running)

    async def status(self) -> QueueStatusView:
        return QueueStatusView(
            queue_name=self.queue_name,
            paused=self._paused,
            waiting=len(self._waiting),
            active=len(self._running),
            delayed=len(self._delayed),
            completed=self._completed,
            failed=self._failed,
            workers_online=1 if self._workers_started else 0,
            concurrency=self.settings.queue_concurrency,
            backend=self.kind,
        )

    async def pause(self) -> QueueStatusView:
        self._set_paused(True)
        return await self.status()

    async def resume(self) -> QueueStatusView:
        self._set_paused(False)
        return await self.status()

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        try:
            if paused:
                self._pause_file.parent.mkdir(parents=True, exist_ok=True)
                self._pause_file.touch()
            else:
                self._pause_file.unlink(missing_ok=True)
        except OSError as exc:  # the flag still holds for this process
            log.warning("queue.pause_flag_not_saved", path=str(self._pause_file), error=str(exc))
        log.info("queue.paused" if paused else "queue.resumed", queue=self.queue_name)
        self._wake.set()

    async def list_workers(self) -> list[WorkerInfo]:
        if not self._workers_started:
            return []
        record = self.record
        now = time.time()
        return [
            WorkerInfo(
                id=record.id,
                host=record.host,
                pid=record.pid,
                started_at=record.started_at,
                last_heartbeat_at=now,  # in-process: alive while the service answers
                state=WorkerState.ONLINE,
                jobs_in_hand=tuple(sorted(record.jobs_in_hand)),
                concurrency=record.concurrency,
                processed=record.processed,
            )
        ]

    # --- worker side ------------------------------------------------------------

    async def admit(self, delivery: Delivery, holder: str) -> Admission:
        job = delivery.job
        current = self._jobs.get(job.task_id)
        if current is not None and current != job.job_id:
            return Admission.STALE
        current_holder = self._locks.get(job.task_id)
        if current_holder is not None and current_holder != holder:
            return Admission.BUSY
        self._locks[job.task_id] = holder
        return Admission.RUN

    async def settle(self, delivery: Delivery, result: JobResult, holder: str) -> None:
        job = delivery.job
        if self._locks.get(job.task_id) == holder:
            del self._locks[job.task_id]
        if result.outcome is Outcome.RETRY:
            next_job = job if result.same_attempt else job.next_attempt()
            due = time.monotonic() + result.delay_seconds
            heapq.heappush(self._delayed, (due, next(self._seq), next_job))
            self._jobs.setdefault(job.task_id, job.job_id)
            self._wake.set()
            return
        if self._jobs.get(job.task_id) == job.job_id:
            del self._jobs[job.task_id]
        if result.outcome is Outcome.COMPLETED:
            self._completed += 1
        elif result.outcome is Outcome.FAILED:
            self._failed += 1

    # --- the in-process workers -------------------------------------------------

    async def run_workers(self, handler: JobHandler) -> None:
        """Take jobs while not paused, QUEUE_CONCURRENCY at a time (a background job)."""
        runner = JobRunner(
            self,
            handler,
            self.record,
            busy_retry_seconds=policy.backoff_delay(1, self.settings.retry_base_seconds),
        )
        slots = asyncio.Semaphore(self.settings.queue_concurrency)
        self._workers_started = True
        log.info("worker.started", worker_id=self.record.id, mode=self.kind)
        try:
            while True:
                await slots.acquire()
                try:
                    delivery = await self._next_delivery()
                except BaseException:
                    slots.release()
                    raise
                task = asyncio.create_task(self._run_one(runner, delivery, slots))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            self._workers_started = False

    async def _run_one(
        self, runner: JobRunner, delivery: Delivery, slots: asyncio.Semaphore
    ) -> None:
        try:
            await runner.run(delivery)
        except Exception:
            # The runner settles every result; reaching here is a bug. Put the
            # job back so the task is not lost.
            log.exception("job.runner_crashed")
            self._locks.pop(delivery.job.task_id, None)
            await self.settle(
                delivery,
                JobResult(Outcome.RETRY, "runner crashed", delay_seconds=1.0, same_attempt=True),
                self.record.id,
            )
        finally:
            slots.release()

    async def _next_delivery(self) -> Delivery:
        while True:
            self._move_due()
            if not self._paused and self._waiting:
                return self._waiting.popleft()
            self._wake.clear()
            timeout = None
            if self._delayed:
                timeout = max(0.0, self._delayed[0][0] - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _move_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job = heapq.heappop(self._delayed)
            self._waiting.append(Delivery(job))
