"""The queue service's side, above the backends: ids validated once, batch
enqueue, pause and resume, status, and the recovery of a queue that lost its
data (a Redis flush or restart without persistence, a fresh embedded queue):
every unfinished task is enqueued again at once.

With a QueueState (the tasks database, the normal case), the pause flag and the
completed/failed counts are the database's: pause and resume write it first,
status reads it, and every tick the backend's copy of the flag (what the
workers watch) is brought in line, so a flushed Redis gets it back within a
second. Without one (tests of the queue's own mechanics), the backend's own.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.log import get_logger
from shared.principal import current_identity
from shared.text import MAX_REASON, bounded_text

from .backend import QueueBackend
from .errors import InvalidTaskId, QueueUnavailable
from .model import (
    EnqueueResult,
    JobState,
    JobView,
    QueueStatusView,
    WorkerInfo,
    validate_task_id,
)
from .state import QueueState
from .tasks_client import TaskDirectory

log = get_logger(__name__)

# EnqueueTasks takes at most this many tasks a call.
MAX_ENQUEUE_BATCH = 500
# How often the backend's copy of the pause flag is checked against the database's.
PAUSE_SYNC_SECONDS = 1.0
# ListJobs pages; GetJob reads the states in pages of this size.
DEFAULT_JOB_PAGE = 50
MAX_JOB_PAGE = 500
SCAN_PAGE = 500
# The states the backend holds, in the order GetJob looks (the fewest first).
HELD_STATES = (JobState.ACTIVE, JobState.DELAYED, JobState.WAITING)
# A job id (uuid4 hex) or a task id (a UUID); any sane token of the queue's ids.
_JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TASK_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_CURSOR = re.compile(r"\d{1,20}(-\d{1,20})?")

# Enqueues every unfinished task again (pipeline.requeue_unfinished over the
# tasks service); returns how many were added.
Requeue = Callable[[Callable[[Sequence[str]], Awaitable[list[EnqueueResult]]]], Awaitable[int]]


@dataclass(frozen=True)
class EnqueueItem:
    """One task's outcome in a batch enqueue: a result, or why its id was refused."""

    task_id: str
    result: EnqueueResult | None
    invalid: str = ""


class QueueControl:
    def __init__(
        self,
        backend: QueueBackend,
        requeue: Requeue | None = None,
        state: QueueState | None = None,
        tasks: TaskDirectory | None = None,
    ) -> None:
        self.backend = backend
        self.requeue = requeue
        self.state = state
        # The tasks service, for the FAILED jobs and a discarded job's task.
        self.tasks = tasks
        self._next_sync = 0.0

    async def enqueue(self, task_id: str) -> EnqueueResult:
        validate_task_id(task_id)
        (result,) = await self.backend.enqueue_many([task_id])
        return result

    async def enqueue_many(self, task_ids: Sequence[str]) -> list[EnqueueItem]:
        if not task_ids:
            raise InvalidArgument("task_ids", "is required")
        if len(task_ids) > MAX_ENQUEUE_BATCH:
            raise InvalidArgument("task_ids", f"at most {MAX_ENQUEUE_BATCH} a call")
        valid: list[str] = []
        items: list[EnqueueItem] = []
        for task_id in task_ids:
            try:
                valid.append(validate_task_id(task_id))
                items.append(EnqueueItem(task_id, None))
            except InvalidTaskId as exc:
                items.append(EnqueueItem(task_id, None, invalid=str(exc)))
        results = iter(await self.backend.enqueue_many(valid) if valid else [])
        return [
            item if item.invalid else EnqueueItem(item.task_id, next(results)) for item in items
        ]

    async def status(self) -> QueueStatusView:
        view = await self.backend.status()
        if self.state is None:
            return view
        try:
            durable = await self.state.get()
        except QueueUnavailable as exc:
            # The jobs' counts still answer; the flag is the workers' copy.
            log.warning("queue.state_unavailable", error=str(exc))
            return view
        return dataclasses.replace(
            view, paused=durable.paused, completed=durable.completed, failed=durable.failed
        )

    async def pause(self) -> QueueStatusView:
        await self._set_paused(True)
        return await self.status()

    async def resume(self) -> QueueStatusView:
        await self._set_paused(False)
        return await self.status()

    async def _set_paused(self, paused: bool) -> None:
        if self.state is not None:
            await self.state.set_paused(paused)  # the durable flag first
        await self.backend.set_paused(paused)
        log.info("queue.paused" if paused else "queue.resumed", queue=self.backend.queue_name)

    async def list_workers(self) -> list[WorkerInfo]:
        return await self.backend.list_workers()

    async def sync_pause(self) -> None:
        """One check (every tick, at most once a second): the backend's copy of
        the pause flag follows the database's."""
        now = time.monotonic()
        if self.state is None or now < self._next_sync:
            return
        self._next_sync = now + PAUSE_SYNC_SECONDS
        durable = await self.state.get()
        if durable.paused != await self.backend.read_paused():
            log.info("queue.pause_restored", paused=durable.paused, queue=self.backend.queue_name)
            await self.backend.set_paused(durable.paused)

    async def recover(self) -> None:
        """One check (a background job runs it every tick): when the queue lost
        its data, enqueue every unfinished task again. The epoch is claimed
        first, so a flush during the requeue is seen on the next check."""
        if self.requeue is None or not await self.backend.claim_epoch():
            return
        log.warning("queue.data_lost", queue=self.backend.queue_name, backend=self.backend.kind)
        try:
            await self.requeue(self.backend.enqueue_many)
        except BaseException:
            # Not done: the next check starts it over (enqueue is idempotent).
            await self.backend.drop_epoch()
            raise

    # --- job actions (operators) -----------------------------------------------------

    async def list_jobs(
        self, state: JobState | None, page_size: int, page_token: str
    ) -> tuple[list[JobView], str]:
        """A page of the jobs in `state` and the next page's token ("" on the last)."""
        if state is None:
            raise InvalidArgument("state", "is required: waiting, active, delayed or failed")
        if not 0 <= page_size <= MAX_JOB_PAGE:
            raise InvalidArgument("page_size", f"between 1 and {MAX_JOB_PAGE}, got {page_size}")
        size = page_size or DEFAULT_JOB_PAGE
        after = _decode_job_token(page_token, state)
        if state is JobState.FAILED:
            jobs, after = await self._tasks().failed(size, after)
            return jobs, _encode_job_token(state, after)
        try:
            page = await self.backend.list_jobs(state, after, size)
        except ValueError:
            raise InvalidArgument("page_token", "is not one of this queue's tokens") from None
        return page.jobs, _encode_job_token(state, page.after)

    async def get_job(self, job_id: str) -> JobView:
        """The job by its id or its task's id, in any state."""
        job_id = _validate_job_id(job_id)
        found = await self._find(job_id, HELD_STATES)
        if found is not None:
            return found
        if self.tasks is not None:
            failed = await self.tasks.failed_job(job_id)
            if failed is not None:
                return failed
        raise NotFound(f"no job {job_id!r}: not on the queue, and no failed task has that id")

    async def discard(self, job_id: str, reason: str) -> JobView:
        """Cancel the WAITING job's task through the tasks service, then take the
        job off the queue."""
        job_id = _validate_job_id(job_id)
        # The tasks service's rule for a reason, checked here: its refusal of
        # the forwarded reason would otherwise reach the caller as a fault.
        reason = bounded_text("reason", reason, MAX_REASON)
        view = await self._held(job_id, JobState.WAITING, "discarded")
        who = current_identity().principal
        why = f"discarded from the queue by {who}" + (f": {reason}" if reason else "")
        why = why[:MAX_REASON]  # the prefix must not push a valid reason over the limit
        # The task first: once it is CANCELLED, a worker that takes the job
        # anyway skips it, so the task is never left queued without a job.
        await self._tasks().cancel(view.job.task_id, why)
        removed = await self.backend.discard(view)
        log.info(
            "queue.job_discarded",
            job_id=view.job.job_id,
            task_id=view.job.task_id,
            by=who,
            removed=removed,
        )
        return view

    async def promote(self, job_id: str) -> JobView:
        """Move a DELAYED job to the waiting jobs now."""
        job_id = _validate_job_id(job_id)
        view = await self._held(job_id, JobState.DELAYED, "promoted")
        if not await self.backend.promote(view):
            raise FailedPrecondition(f"job {job_id} is no longer delayed (it is due or ran)")
        log.info(
            "queue.job_promoted",
            job_id=view.job.job_id,
            task_id=view.job.task_id,
            by=current_identity().principal,
        )
        return dataclasses.replace(view, state=JobState.WAITING, run_at=0.0, queued_at=time.time())

    async def _held(self, job_id: str, state: JobState, action: str) -> JobView:
        """The job, which must be in `state`; FAILED_PRECONDITION naming where it is."""
        view = await self._find(job_id, HELD_STATES)
        if view is None:
            raise NotFound(f"no job {job_id!r} on the queue")
        if view.state is not state:
            raise FailedPrecondition(
                f"job {view.job.job_id} is {view.state.value}: only a {state.value} job is {action}"
            )
        return view

    async def _find(self, job_id: str, states: Sequence[JobState]) -> JobView | None:
        """Page through the states for the job (by job id or task id). A task id
        the backend holds no job for is not looked for at all."""
        current = await self.backend.current_job_id(job_id)
        if current is None and _TASK_UUID.fullmatch(job_id):
            return None  # a task id (job ids are hex without dashes) with no job
        wanted = current or job_id
        for state in states:
            after = ""
            while True:
                page = await self.backend.list_jobs(state, after, SCAN_PAGE)
                for view in page.jobs:
                    if view.job.job_id == wanted:
                        return view
                if not page.after:
                    break
                after = page.after
        return None

    def _tasks(self) -> TaskDirectory:
        if self.tasks is None:
            raise FailedPrecondition("this queue service runs without the tasks service")
        return self.tasks


def _validate_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("id", "is required: a job id or a task id")
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument("id", "must be 1-128 characters of [A-Za-z0-9._:-]")
    return job_id


def _encode_job_token(state: JobState, after: str) -> str:
    if not after:
        return ""
    raw = json.dumps({"s": state.value, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_job_token(token: str, state: JobState) -> str:
    """The cursor in a ListJobs token, which must be of the same state."""
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        token_state, after = str(data["s"]), str(data["a"])
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument("page_token", "is not a ListJobs page token") from None
    if token_state != state.value:
        raise InvalidArgument(
            "page_token", f"is a token of the {token_state} jobs, not the {state.value} ones"
        )
    if state is not JobState.FAILED and not _CURSOR.fullmatch(after):
        raise InvalidArgument("page_token", "is not a ListJobs page token")
    return after
