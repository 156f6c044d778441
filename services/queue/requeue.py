"""Enqueue again every task the queue should hold but may have lost: after a
Redis flush or a restart without persistence, or at the start of a fresh
embedded queue (QueueControl.recover decides when)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

import grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared.log import get_logger
from shared.retry import Backoff, retry_call

from . import policy
from .model import EnqueueResult

log = get_logger(__name__)


# ListTasks while the tasks service is not up yet: tried until it answers.
LIST_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=5.0)


def _describe(step: str, exc: grpc.aio.AioRpcError) -> str:
    return f"{step}: {exc.code().name}: {exc.details() or ''}".rstrip(": ")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and policy.is_transient(exc.code().name)


async def requeue_unfinished(
    tasks: tasks_pb2_grpc.TaskServiceStub,
    enqueue_many: Callable[[Sequence[str]], Awaitable[list[EnqueueResult]]],
    *,
    call_timeout_seconds: float,
    page_size: int = 500,
) -> int:
    """Enqueue every QUEUED, ACTIVE or WAITING task, oldest first; returns how many.

    The queue lost its jobs (a Redis flush or restart without persistence, or
    a fresh embedded queue): without this their tasks would wait for the tasks
    service's stale-task sweep (requeue_stale_after_seconds). Waits for the
    tasks service when it is not up yet. Enqueue is idempotent per task, so
    tasks the tasks service re-sends meanwhile are not doubled.
    """
    task_ids: list[str] = []
    for status in (
        tasks_pb2.TASK_STATUS_ACTIVE,
        tasks_pb2.TASK_STATUS_WAITING,
        tasks_pb2.TASK_STATUS_QUEUED,
    ):
        token = ""
        while True:
            request = tasks_pb2.ListTasksRequest(
                status=status, page_size=page_size, page_token=token
            )
            try:
                page = await retry_call(
                    "requeue ListTasks",
                    functools.partial(tasks.ListTasks, request, timeout=call_timeout_seconds),
                    retry_on=(grpc.aio.AioRpcError,),
                    retry_if=_transient,
                    backoff=LIST_BACKOFF,
                )
            except grpc.aio.AioRpcError as exc:
                # A status this tasks service does not know (an older version
                # without WAITING): the others still come back.
                log.error(
                    "queue.requeue_status_skipped", status=status, error=_describe("ListTasks", exc)
                )
                break
            # Newest first, per status: reversed below into the order they came.
            task_ids.extend(task.id for task in page.tasks)
            token = page.next_page_token
            if not token:
                break
    task_ids.reverse()
    enqueued = 0
    for start in range(0, len(task_ids), page_size):
        results = await enqueue_many(task_ids[start : start + page_size])
        enqueued += sum(not r.already_enqueued and not r.full for r in results)
        if any(r.full for r in results):
            # The tasks service's reconciler offers the rest again later.
            log.warning("queue.requeue_stopped_full", requeued=enqueued)
            break
    if enqueued:
        log.info("queue.requeued_unfinished", tasks=enqueued)
    return enqueued
