"""The embedded queue (REDIS_URL empty): the same backend in the queue service's
own process, read by an in-process BatchWorker (the reference system's "sync
fallback"): `make run` needs no Redis.

Jobs live in memory. A fresh embedded queue has no epoch, so the queue service
enqueues again every unfinished task the tasks service knows at start (as it
does after a Redis flush): the jobs a stopped process held come back at once.
The paused flag is kept in a file under data_dir so it survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from shared.context import current_request_id
from shared.log import get_logger

from . import policy
from .backend import Delivery, QueueBackend, Settlement
from .model import (
    Admission,
    EnqueueResult,
    Job,
    JobPage,
    JobState,
    JobView,
    Outcome,
    QueueStatusView,
    WorkerInfo,
    WorkerRecord,
    WorkerState,
    new_job_id,
)
from .settings import QueueSettings

log = get_logger(__name__)

# How often watch_pause calls back without a change (as the Redis re-read does).
PAUSE_REREAD_SECONDS = 1.0


class EmbeddedQueue(QueueBackend):
    kind: ClassVar[str] = "embedded"
    probe_name: ClassVar[str] = "embedded-queue"
    in_process_workers: ClassVar[bool] = True

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self._waiting: deque[Delivery] = deque()
        self._delayed: list[tuple[float, int, Job]] = []  # (due, seq, job), a heap
        self._seq = itertools.count()
        self._jobs: dict[str, str] = {}  # task id -> its current job id
        self._locks: dict[str, str] = {}  # task id -> the run holding it
        self._in_hand = 0
        # The deliveries in hand by ref (ListJobs ACTIVE), and the refs' sequence.
        self._active: dict[str, Delivery] = {}
        self._refs = itertools.count(1)
        self._completed = 0
        self._failed = 0
        self._epoch = False
        self._workers: dict[str, tuple[float, WorkerRecord]] = {}  # id -> (heartbeat, record)
        self._wake = asyncio.Event()
        self._pause_changed = asyncio.Event()
        self._pause_file = Path(settings.data_dir) / f"queue-{settings.queue_name}.paused"
        self._paused = self._pause_file.exists()

    @property
    def queue_name(self) -> str:
        return self.settings.queue_name

    async def start(self) -> None:
        """Nothing to prepare: the paused flag was read at construction."""

    async def close(self) -> None:
        """Nothing to release: the jobs die with the process (and come back at start)."""

    async def probe(self) -> str:
        return "in-process"

    # --- service side -----------------------------------------------------------

    async def enqueue_many(self, task_ids: Sequence[str]) -> list[EnqueueResult]:
        request_id = current_request_id()
        results: list[EnqueueResult] = []
        for task_id in task_ids:
            existing = self._jobs.get(task_id)
            if existing is not None:
                results.append(EnqueueResult(existing, already_enqueued=True))
                continue
            if self._size() >= self.settings.queue_max_length:
                results.append(EnqueueResult("", already_enqueued=False, full=True))
                continue
            job = Job(new_job_id(), task_id, request_id=request_id)
            self._jobs[task_id] = job.job_id
            self._waiting.append(self._delivery(job))
            results.append(EnqueueResult(job.job_id, already_enqueued=False))
        self._wake.set()
        return results

    def _delivery(self, job: Job) -> Delivery:
        return Delivery(job, ref=str(next(self._refs)), queued_at=time.time())

    def _size(self) -> int:
        return len(self._waiting) + len(self._delayed) + self._in_hand

    async def status(self) -> QueueStatusView:
        workers = await self.list_workers()
        return QueueStatusView(
            queue_name=self.queue_name,
            paused=self._paused,
            waiting=len(self._waiting),
            active=self._in_hand,
            delayed=len(self._delayed),
            completed=self._completed,
            failed=self._failed,
            workers_online=sum(w.state is WorkerState.ONLINE for w in workers),
            concurrency=self.settings.queue_concurrency,
            backend=self.kind,
            idle_reasons=policy.idle_reasons(workers),
        )

    async def set_paused(self, paused: bool) -> None:
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
        self._pause_changed.set()

    async def read_paused(self) -> bool:
        return self._paused

    async def list_workers(self) -> list[WorkerInfo]:
        now = time.time()
        offline_after = self.settings.worker_offline_after_seconds
        workers = [
            record.info(seen, policy.worker_state(seen, now, offline_after))
            for seen, record in self._workers.values()
        ]
        return policy.sort_workers(workers)

    async def claim_epoch(self) -> bool:
        lost, self._epoch = not self._epoch, True
        return lost

    async def drop_epoch(self) -> None:
        self._epoch = False

    # --- worker side ------------------------------------------------------------

    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + block_seconds
        while True:
            self._move_due()
            if self._waiting:
                taken = [self._waiting.popleft() for _ in range(min(count, len(self._waiting)))]
                self._in_hand += len(taken)
                self._active.update((delivery.ref, delivery) for delivery in taken)
                return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if self._delayed:
                remaining = min(remaining, max(0.0, self._delayed[0][0] - time.monotonic()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        self._in_hand -= len(deliveries)
        for delivery in deliveries:
            self._active.pop(delivery.ref, None)
        self._waiting.extendleft(reversed(deliveries))

    async def admit_many(
        self, deliveries: Sequence[Delivery], holders: Sequence[str]
    ) -> list[Admission]:
        return [
            self._admit(delivery, holder)
            for delivery, holder in zip(deliveries, holders, strict=True)
        ]

    def _admit(self, delivery: Delivery, holder: str) -> Admission:
        job = delivery.job
        current = self._jobs.get(job.task_id)
        if current is not None and current != job.job_id:
            return Admission.STALE
        current_holder = self._locks.get(job.task_id)
        if current_holder is not None and current_holder != holder:
            return Admission.BUSY
        self._locks[job.task_id] = holder
        return Admission.RUN

    async def settle_many(self, settlements: Sequence[Settlement]) -> None:
        for item in settlements:
            self._settle(item)
        self._wake.set()

    def _settle(self, item: Settlement) -> None:
        job, result = item.delivery.job, item.result
        self._in_hand -= 1
        self._active.pop(item.delivery.ref, None)
        if self._locks.get(job.task_id) == item.holder:
            del self._locks[job.task_id]
        if result.outcome is Outcome.RETRY:
            due = time.monotonic() + result.delay_seconds
            heapq.heappush(self._delayed, (due, next(self._seq), job.retried(result)))
            self._jobs.setdefault(job.task_id, job.job_id)
            return
        if self._jobs.get(job.task_id) == job.job_id:
            del self._jobs[job.task_id]
        if result.outcome is Outcome.COMPLETED:
            self._completed += 1
        elif result.outcome is Outcome.FAILED:
            self._failed += 1

    async def heartbeat(self, record: WorkerRecord) -> None:
        self._workers[record.id] = (time.time(), record)

    async def leave(self, record: WorkerRecord) -> int:
        self._workers.pop(record.id, None)
        return 0

    async def watch_pause(self, on_change: Callable[[bool], None]) -> None:
        while True:
            self._pause_changed.clear()
            on_change(self._paused)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pause_changed.wait(), PAUSE_REREAD_SECONDS)

    async def maintain(self) -> None:
        """Due retries are moved as the worker reads (`take`); nothing else to keep."""
        self._move_due()

    def _move_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job = heapq.heappop(self._delayed)
            self._waiting.append(self._delivery(job))

    # --- job actions (operators) -----------------------------------------------
    # Cursors are the refs' sequence numbers (waiting, active) and the delayed
    # heap's sequence numbers, in the order each state lists.

    async def list_jobs(self, state: JobState, after: str, limit: int) -> JobPage:
        self._move_due()
        views: list[JobView]
        if state is JobState.WAITING:
            views = [self._view(d, JobState.WAITING) for d in self._waiting]
        elif state is JobState.ACTIVE:
            views = [self._view(d, JobState.ACTIVE, deliveries=1) for d in self._active.values()]
        elif state is JobState.DELAYED:
            now_wall, now = time.time(), time.monotonic()
            views = [
                JobView(job, JobState.DELAYED, run_at=now_wall + (due - now), ref=str(seq))
                for due, seq, job in sorted(self._delayed)
            ]
        else:
            raise ValueError(f"the embedded queue holds no {state.value} jobs")
        start = 0
        if after:
            # Past the cursor's position; a cursor whose job moved on starts over
            # from the next higher sequence number in list order.
            mark = int(after)
            start = next((i + 1 for i, v in enumerate(views) if int(str(v.ref)) == mark), 0)
            if start == 0:
                start = next((i for i, v in enumerate(views) if int(str(v.ref)) > mark), len(views))
        page = views[start : start + limit]
        more = start + limit < len(views)
        return JobPage(page, str(page[-1].ref) if more and page else "")

    @staticmethod
    def _view(delivery: Delivery, state: JobState, deliveries: int = 0) -> JobView:
        return JobView(
            delivery.job,
            state,
            queued_at=delivery.queued_at,
            deliveries=deliveries,
            ref=delivery.ref,
        )

    async def current_job_id(self, task_id: str) -> str | None:
        return self._jobs.get(task_id)

    async def discard(self, view: JobView) -> bool:
        for delivery in self._waiting:
            if delivery.ref == view.ref:
                self._waiting.remove(delivery)
                if self._jobs.get(delivery.job.task_id) == delivery.job.job_id:
                    del self._jobs[delivery.job.task_id]
                return True
        return False

    async def promote(self, view: JobView) -> bool:
        for index, (_, seq, job) in enumerate(self._delayed):
            if str(seq) == view.ref:
                self._delayed.pop(index)
                heapq.heapify(self._delayed)
                self._waiting.append(self._delivery(job))
                self._wake.set()
                return True
        return False
