"""Handing tasks to the queue, off the request path, without ever losing one.

CreateTask commits the task as PENDING (the outbox is the tasks table itself)
and submits its id to the `Dispatcher`, which calls QueueService.EnqueueTask
and records the acknowledgement (PENDING -> QUEUED, queue_job_id). When the
queue is down, or the process dies first, the task stays PENDING and the
`Reconciler` submits it again once it is older than reconcile_after_seconds.
The reconciler also re-sends QUEUED or ACTIVE tasks untouched for
requeue_stale_after_seconds, whose queue entry may have been lost. EnqueueTask
is idempotent per task id, so a re-send of a live entry changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Protocol

import grpc
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from shared.context import bind_request_id, bind_task_id, current_request_id, new_request_id
from shared.errors import Unavailable
from shared.grpc_client import create_channel
from shared.log import get_logger

from . import audit
from .model import EventType, Task, TaskStatus
from .store import TaskStore

log = get_logger(__name__)


class QueueClient(Protocol):
    async def enqueue(self, task_id: str) -> tuple[str, bool]:
        """Enqueue; returns the job id and whether the queue already had the task."""
        ...

    async def version(self) -> str:
        """A probe: what the queue reports about itself; raises when unreachable."""
        ...

    async def close(self) -> None: ...


class GrpcQueueClient:
    """QueueService over gRPC. The channel is created lazily, inside the running loop."""

    def __init__(self, target: str, timeout_seconds: float) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: queue_pb2_grpc.QueueServiceStub | None = None

    def _queue(self) -> queue_pb2_grpc.QueueServiceStub:
        if self._stub is None:
            self._channel = create_channel(self.target)
            self._stub = queue_pb2_grpc.QueueServiceStub(self._channel)
        return self._stub

    async def enqueue(self, task_id: str) -> tuple[str, bool]:
        try:
            response = await self._queue().EnqueueTask(
                queue_pb2.EnqueueTaskRequest(task_id=task_id), timeout=self.timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"queue {self.target}: {exc.code().name} {exc.details()}") from None
        return response.job_id, response.already_enqueued

    async def version(self) -> str:
        response = await self._queue().GetQueueStatus(
            queue_pb2.GetQueueStatusRequest(), timeout=self.timeout_seconds
        )
        return f"{response.status.backend} queue {response.status.queue_name}"

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


class Dispatcher:
    """Enqueues submitted tasks with a few concurrent senders; a background job."""

    def __init__(
        self,
        store: TaskStore,
        queue: QueueClient,
        *,
        senders: int = 8,
        max_backlog: int = 100_000,
    ) -> None:
        self.store = store
        self.queue = queue
        self.senders = senders
        # (task id, request id of the call that created it, for the audit trail
        # and logs, and whether a queue that does not know it had lost it)
        self._backlog: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue(max_backlog)
        # Ids waiting or being sent: a task is never sent twice at once.
        self._in_hand: set[str] = set()
        self._queue_up: bool | None = None
        self.enqueued = 0
        self.failed = 0

    def submit(self, task_id: str, *, resend: bool = False) -> bool:
        """Queue a task for enqueueing; False when it is in hand already or the
        backlog is full (the reconciler picks it up later). `resend`: the task
        was past PENDING when it was chosen to be sent again, so a queue that
        does not know it had lost it."""
        if task_id in self._in_hand:
            return False
        try:
            self._backlog.put_nowait((task_id, current_request_id(), resend))
        except asyncio.QueueFull:
            return False
        self._in_hand.add(task_id)
        return True

    @property
    def backlog(self) -> int:
        return self._backlog.qsize()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.senders):
                group.create_task(self._sender())

    async def _sender(self) -> None:
        while True:
            task_id, request_id, resend = await self._backlog.get()
            bind_request_id(request_id or new_request_id())
            try:
                await self.send(task_id, resend=resend)
            finally:
                self._in_hand.discard(task_id)

    async def send(self, task_id: str, *, resend: bool = True) -> bool:
        """Enqueue one task and record the acknowledgement; False when the queue
        did not take it (the task stays as it is, for the reconciler)."""
        bind_task_id(task_id)
        try:
            job_id, already = await self.queue.enqueue(task_id)
        except Exception as exc:
            self.failed += 1
            self._queue_state(False, str(exc))
            log.debug("dispatch.enqueue_failed", error=str(exc))
            return False
        self._queue_state(True)
        try:
            task = await self.record(task_id, job_id, already, resend=resend)
        except Exception:
            # Enqueued but not recorded: the reconciler re-sends it, and the
            # queue answers already_enqueued.
            log.exception("dispatch.record_failed", job_id=job_id)
            return False
        self.enqueued += 1
        log.debug("dispatch.enqueued", job_id=job_id, status=task.status.value, already=already)
        return True

    async def record(
        self, task_id: str, job_id: str, already_enqueued: bool, *, resend: bool
    ) -> Task:
        """Record the queue's acknowledgement: PENDING becomes QUEUED; a task past
        PENDING gets the job id and a fresh enqueued_at, and a `requeued` event
        only when it was re-sent past PENDING and the queue did not have it (the
        queue had lost it). A first send acknowledged after a worker started the
        task is recorded as nothing: the task is past QUEUED, nothing was lost."""
        clock = self.store.clock
        task = await self.store.mark_queued(
            task_id, job_id, audit.entry(clock, EventType.QUEUED, f"job {job_id}")
        )
        if task is not None:
            return task
        if already_enqueued or not resend:
            # Nothing was lost: refresh the clock without an audit event.
            task = await self.store.touch_enqueued(task_id, job_id)
        else:
            message = f"job {job_id} (the queue had lost it)"
            task = await self.store.requeue(
                task_id, job_id, audit.entry(clock, EventType.REQUEUED, message)
            )
        return task if task is not None else await self.store.get_task(task_id)

    def _queue_state(self, up: bool, error: str = "") -> None:
        # One log line per change of the queue's reachability, not one per task.
        if up != self._queue_up:
            if up:
                log.info("dispatch.queue_reachable")
            else:
                log.warning("dispatch.queue_unreachable", error=error)
            self._queue_up = up


class Reconciler:
    """Finds tasks the queue may not hold and submits them again; a background job."""

    def __init__(
        self,
        store: TaskStore,
        dispatcher: Dispatcher,
        *,
        pending_after_seconds: float,
        stale_after_seconds: float,
        interval_seconds: float,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.pending_after = timedelta(seconds=pending_after_seconds)
        self.stale_after = timedelta(seconds=stale_after_seconds)
        self.interval_seconds = interval_seconds
        self.batch = batch

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.reconcile_once()
            await asyncio.sleep(self.interval_seconds)

    async def reconcile_once(self) -> int:
        """Submit every candidate; returns how many were submitted."""
        now = self.store.clock()
        try:
            candidates = await self.store.reconcile_candidates(
                now - self.pending_after, now - self.stale_after, self.batch
            )
        except Exception as exc:
            log.warning("reconcile.query_failed", error=str(exc))
            raise
        submitted = sum(
            1
            for task_id, status in candidates
            if self.dispatcher.submit(task_id, resend=status is not TaskStatus.PENDING)
        )
        if submitted:
            log.info("reconcile.resubmitted", tasks=submitted)
        return submitted
