"""Handing tasks to the queue, off the request path, without ever losing one.

CreateTask commits the task as PENDING (the outbox is the tasks table itself)
and submits its id to the `Dispatcher`, which hands batches to the queue
(QueueIntakeService.EnqueueTasks) and records the acknowledgements in one
statement (PENDING -> QUEUED, queue_job_id). When the queue is down, or the
process dies first, the task stays PENDING and the `Reconciler` submits it
again once it is older than reconcile_after_seconds. The reconciler also
re-sends QUEUED, ACTIVE or WAITING tasks untouched for
requeue_stale_after_seconds, whose queue entry may have been lost. Enqueueing
is idempotent per task id, so a re-send of a live entry changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import grpc
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from shared.context import bind_request_id, bind_task_id, current_request_id, new_request_id
from shared.errors import Unavailable
from shared.grpc_client import LazyChannel
from shared.log import get_logger
from shared.retry import Backoff, keep_running

from . import audit
from .model import EnqueueAck, EventType, TaskStatus
from .store import TaskStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Enqueued:
    """The queue's answer for one task of a batch."""

    task_id: str
    job_id: str = ""
    already_enqueued: bool = False
    # Why the queue did not take it ("" when it did).
    error: str = ""


class QueueClient(Protocol):
    async def enqueue_many(self, task_ids: list[str]) -> list[Enqueued]:
        """Enqueue a batch; one answer per task, in order. Raises when the
        queue cannot be reached at all."""
        ...

    async def version(self) -> str:
        """A probe: what the queue reports about itself; raises when unreachable."""
        ...

    async def close(self) -> None: ...


class GrpcQueueClient:
    """The queue over gRPC: QueueIntakeService.EnqueueTasks, one call per batch
    (QueueService.EnqueueTask per task against a queue that does not serve the
    batch RPC yet). The channel is created lazily, inside the running loop."""

    def __init__(
        self,
        target: str,
        timeout_seconds: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        # mutual TLS to the queue's internal port (shared.security), or plaintext.
        self._channel = LazyChannel(target, credentials)
        self._batch_rpc = True

    def _open(self) -> grpc.aio.Channel:
        return self._channel.get()

    def _unavailable(self, exc: grpc.aio.AioRpcError) -> Unavailable:
        return Unavailable(f"queue {self.target}: {exc.code().name} {exc.details()}")

    async def enqueue_many(self, task_ids: list[str]) -> list[Enqueued]:
        if self._batch_rpc:
            stub = queue_pb2_grpc.QueueIntakeServiceStub(self._open())
            try:
                response = await stub.EnqueueTasks(
                    queue_pb2.EnqueueTasksRequest(task_ids=task_ids), timeout=self.timeout_seconds
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise self._unavailable(exc) from None
                log.info("dispatch.batch_rpc_unimplemented", queue=self.target)
                self._batch_rpc = False
            else:
                return [
                    Enqueued(
                        t.task_id,
                        t.job_id,
                        t.already_enqueued,
                        "" if t.status.code == 0 else t.status.message or str(t.status.code),
                    )
                    for t in response.tasks
                ]
        return list(await asyncio.gather(*(self._enqueue_one(task_id) for task_id in task_ids)))

    async def _enqueue_one(self, task_id: str) -> Enqueued:
        stub = queue_pb2_grpc.QueueServiceStub(self._open())
        try:
            response = await stub.EnqueueTask(
                queue_pb2.EnqueueTaskRequest(task_id=task_id), timeout=self.timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            return Enqueued(task_id, error=str(self._unavailable(exc)))
        return Enqueued(task_id, response.job_id, response.already_enqueued)

    async def version(self) -> str:
        stub = queue_pb2_grpc.QueueServiceStub(self._open())
        response = await stub.GetQueueStatus(
            queue_pb2.GetQueueStatusRequest(), timeout=self.timeout_seconds
        )
        return f"{response.status.backend} queue {response.status.queue_name}"

    async def close(self) -> None:
        await self._channel.close()


class Dispatcher:
    """Enqueues submitted tasks in batches with a few concurrent senders; a
    background job. A batch is one EnqueueTasks call and one statement that
    records its acknowledgements."""

    def __init__(
        self,
        store: TaskStore,
        queue: QueueClient,
        *,
        senders: int = 4,
        batch_size: int = 200,
        max_backlog: int = 100_000,
    ) -> None:
        self.store = store
        self.queue = queue
        self.senders = senders
        self.batch_size = batch_size
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
            batch = [await self._backlog.get()]
            while len(batch) < self.batch_size and not self._backlog.empty():
                batch.append(self._backlog.get_nowait())
            # One request id per batch in the logs: the first task's creator's.
            bind_request_id(batch[0][1] or new_request_id())
            try:
                await self.send_many([(task_id, resend) for task_id, _, resend in batch])
            finally:
                for task_id, _, _ in batch:
                    self._in_hand.discard(task_id)

    async def send(self, task_id: str, *, resend: bool = True) -> bool:
        """Enqueue one task now (a batch of one); see send_many."""
        bind_task_id(task_id)
        return await self.send_many([(task_id, resend)]) == 1

    async def send_many(self, items: list[tuple[str, bool]]) -> int:
        """Enqueue a batch and record the acknowledgements in one statement;
        returns how many the queue took and were recorded. A task the queue did
        not take stays as it is, for the reconciler."""
        task_ids = [task_id for task_id, _ in items]
        try:
            answers = await self.queue.enqueue_many(task_ids)
        except Exception as exc:
            self.failed += len(items)
            self._queue_state(False, str(exc))
            log.debug("dispatch.enqueue_failed", tasks=len(items), error=str(exc))
            return 0
        self._queue_state(True)
        resend = dict(items)
        acks = [
            EnqueueAck(
                a.task_id,
                a.job_id,
                # Decided here: a re-send of a task past PENDING that the queue
                # did not hold was lost by it. A first send acknowledged after a
                # worker started the task is no loss (the worker was faster).
                requeue=resend.get(a.task_id, False) and not a.already_enqueued,
            )
            for a in answers
            if not a.error
        ]
        refused = [a for a in answers if a.error]
        if refused:
            self.failed += len(refused)
            log.warning("dispatch.refused", tasks=len(refused), error=refused[0].error)
        if not acks:
            return 0
        try:
            rows = await self.store.mark_enqueued_many(
                acks, audit.entry(self.store.clock, EventType.QUEUED, "")
            )
        except Exception:
            # Enqueued but not recorded: the reconciler re-sends them, and the
            # queue answers already_enqueued.
            log.exception("dispatch.record_failed", tasks=len(acks))
            return 0
        self.enqueued += len(acks)
        log.debug("dispatch.enqueued", tasks=len(acks), recorded=sum(r.applied for r in rows))
        return len(acks)

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
        async def once() -> None:
            await self.reconcile_once()

        # A failing pass (the database down) is logged once per outage, and
        # retried with the backoff; then every interval again.
        await keep_running(
            "reconciler",
            once,
            backoff=Backoff(base_seconds=1.0, cap_seconds=max(1.0, self.interval_seconds)),
            every=self.interval_seconds,
        )

    async def reconcile_once(self) -> int:
        """Submit every candidate; returns how many were submitted."""
        now = self.store.clock()
        candidates = await self.store.reconcile_candidates(
            now - self.pending_after, now - self.stale_after, self.batch
        )
        submitted = sum(
            1
            for task_id, status in candidates
            if self.dispatcher.submit(task_id, resend=status is not TaskStatus.PENDING)
        )
        if submitted:
            log.info("reconcile.resubmitted", tasks=submitted)
        return submitted
