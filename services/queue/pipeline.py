"""One job, end to end: start the task, verify it, report progress, complete or
fail it. The same pipeline runs in the worker processes (Redis mode) and in the
queue service's in-process workers (embedded mode).

Calls per job: StartTask (ACTIVE, progress 0), UpdateTaskProgress(30,
"verifying evidence") sent alongside VerificationEngineService.Verify, then
CompleteTask (100). Verify is one call that gathers the evidence, runs the
checks and stores the report, so there is no finer step to show; an update
between Verify and CompleteTask would last one RPC, invisible to a client
yet a write on the tasks service, which bounds throughput.

Transient faults (policy.is_transient) give RETRY with an exponential delay
until the attempts are used up, then FailTask. A rejected task
(INVALID_ARGUMENT and other final codes) is failed at once; a verification that
ran and failed a check is a result (CompleteTask records FAILED), never retried.
A task that is cancelled or finished is skipped. A job handed out more than
job_max_deliveries times (its workers kept dying with it) fails its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from verifier.verification.v1 import engine_pb2_grpc

from shared.config import Settings
from shared.context import bind_task_id
from shared.grpc_client import create_channel
from shared.log import get_logger
from shared.retry import Backoff

from . import policy
from .health import ServingGate
from .mapping import verdict_name, verify_request_for
from .model import EnqueueResult, Job, JobResult, Outcome

log = get_logger(__name__)

PROGRESS_VERIFYING = 30


def _code(exc: grpc.aio.AioRpcError) -> str:
    return str(exc.code().name)


def _describe(step: str, exc: grpc.aio.AioRpcError) -> str:
    return f"{step}: {_code(exc)}: {exc.details() or ''}".rstrip(": ")


class VerificationPipeline:
    """The JobHandler of the real pipeline, over gRPC to the tasks and verification services."""

    def __init__(
        self,
        tasks: tasks_pb2_grpc.TaskServiceStub,
        verification: engine_pb2_grpc.VerificationEngineServiceStub,
        *,
        worker_id: str,
        retry_budget_seconds: float,
        retry_base_seconds: float,
        max_deliveries: int,
        call_timeout_seconds: float,
        verify_timeout_seconds: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.tasks = tasks
        self.verification = verification
        self.worker_id = worker_id
        self.retry_budget_seconds = retry_budget_seconds
        self.max_deliveries = max_deliveries
        self.backoff = policy.retry_backoff(retry_base_seconds)
        self.call_timeout = call_timeout_seconds
        self.verify_timeout = verify_timeout_seconds
        self.rand = rand

    async def process_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        return list(await asyncio.gather(*(self._process_bound(job) for job in jobs)))

    async def _process_bound(self, job: Job) -> JobResult:
        bind_task_id(job.task_id)
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        return await self.process(job)

    async def process(self, job: Job) -> JobResult:
        if job.deliveries > self.max_deliveries:
            # Every worker that took this job died before settling it; running it
            # again would likely take this one down too.
            log.error("job.poison", deliveries=job.deliveries, max_deliveries=self.max_deliveries)
            return await self._fail(
                job,
                f"given up: handed to a worker {job.deliveries} times (at most "
                f"{self.max_deliveries}), and each one stopped before finishing it "
                "(a crash, a kill or out of memory)",
            )
        try:
            return await self._process(job)
        except grpc.aio.AioRpcError as exc:  # a call below that has no handler of its own
            return await self._on_error(job, "pipeline", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the job: retry, bounded
            log.exception("job.unexpected_error", attempt=job.attempt)
            return await self._transient(job, f"worker error: {type(exc).__name__}: {exc}")

    async def _process(self, job: Job) -> JobResult:
        task_id = job.task_id
        try:
            started = await self.tasks.StartTask(
                tasks_pb2.StartTaskRequest(id=task_id, worker_id=self.worker_id),
                timeout=self.call_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            code = _code(exc)
            if code == "FAILED_PRECONDITION":
                log.info("job.skipped", reason="task cancelled or finished")
                return JobResult(Outcome.SKIPPED, "task cancelled or finished")
            if code == "NOT_FOUND":
                log.warning("job.skipped", reason="task not found")
                return JobResult(Outcome.SKIPPED, "task not found")
            if policy.is_transient(code):
                return await self._transient(job, _describe("StartTask", exc))
            log.error("job.start_rejected", error=_describe("StartTask", exc))
            return JobResult(Outcome.SKIPPED, _describe("StartTask", exc))

        task = started.task
        log.info("job.started", attempt=job.attempt)
        progress = asyncio.ensure_future(
            self._progress(task_id, PROGRESS_VERIFYING, "verifying evidence")
        )
        try:
            verified = await self.verification.Verify(
                verify_request_for(task), timeout=self.verify_timeout
            )
        except grpc.aio.AioRpcError as exc:
            await progress
            return await self._on_error(job, "Verify", exc)
        finally:
            if not progress.done():
                await progress

        summary = verified.summary
        try:
            await self.tasks.CompleteTask(
                tasks_pb2.CompleteTaskRequest(id=task_id, summary=summary),
                timeout=self.call_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if _code(exc) == "FAILED_PRECONDITION":
                log.info("job.skipped", reason="task cancelled while verifying")
                return JobResult(Outcome.SKIPPED, "task cancelled while verifying")
            return await self._on_error(job, "CompleteTask", exc)
        verdict = verdict_name(summary)
        log.info("job.completed", verdict=verdict, attempt=job.attempt)
        return JobResult(Outcome.COMPLETED, verdict)

    async def _progress(self, task_id: str, value: int, message: str) -> None:
        """Progress is for the client's eyes: a failed update never fails the job."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.tasks.UpdateTaskProgress(
                tasks_pb2.UpdateTaskProgressRequest(id=task_id, progress=value, message=message),
                timeout=self.call_timeout,
            )

    async def _on_error(self, job: Job, step: str, exc: grpc.aio.AioRpcError) -> JobResult:
        if policy.is_transient(_code(exc)):
            return await self._transient(job, _describe(step, exc))
        return await self._fail(job, _describe(step, exc))

    async def _transient(self, job: Job, error: str) -> JobResult:
        now = time.time()
        first_fault_at = job.first_fault_at or now
        if policy.within_budget(first_fault_at, now, self.retry_budget_seconds):
            delay = self.backoff.delay(job.attempt, self.rand)
            log.warning(
                "job.retry", attempt=job.attempt, delay_seconds=round(delay, 3), error=error
            )
            return JobResult(
                Outcome.RETRY, error, delay_seconds=delay, first_fault_at=first_fault_at
            )
        waited = round(now - first_fault_at)
        return await self._fail(
            job, f"gave up after {job.attempt} attempts over {waited} s: {error}"
        )

    async def _fail(self, job: Job, error: str) -> JobResult:
        try:
            await self.tasks.FailTask(
                tasks_pb2.FailTaskRequest(
                    id=job.task_id, error_message=policy.truncate_error(error)
                ),
                timeout=self.call_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            code = _code(exc)
            if code == "FAILED_PRECONDITION":
                return JobResult(Outcome.SKIPPED, "task cancelled or finished")
            # The failure could not be recorded: keep the job (the task must not
            # stay ACTIVE forever); it runs again at the longest delay.
            delay = self.backoff.delay(job.attempt, self.rand)
            log.warning("job.fail_unrecorded", error=_describe("FailTask", exc), retry_in=delay)
            return JobResult(Outcome.RETRY, error, delay_seconds=delay)
        log.warning("job.failed", attempt=job.attempt, error=error)
        return JobResult(Outcome.FAILED, error)


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
    backoff = Backoff(base_seconds=0.5, cap_seconds=5.0)
    for status in (
        tasks_pb2.TASK_STATUS_ACTIVE,
        tasks_pb2.TASK_STATUS_WAITING,
        tasks_pb2.TASK_STATUS_QUEUED,
    ):
        token = ""
        failures = 0
        while True:
            request = tasks_pb2.ListTasksRequest(
                status=status, page_size=page_size, page_token=token
            )
            try:
                page = await tasks.ListTasks(request, timeout=call_timeout_seconds)
            except grpc.aio.AioRpcError as exc:
                if not policy.is_transient(_code(exc)):
                    # A status this tasks service does not know (an older
                    # version without WAITING): the others still come back.
                    log.error(
                        "queue.requeue_status_skipped",
                        status=status,
                        error=_describe("ListTasks", exc),
                    )
                    break
                failures += 1
                await asyncio.sleep(backoff.delay(failures))
                continue
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


class PipelineConnection:
    """The pipeline with its own channels to the tasks and verification services.
    Build it inside the running event loop (grpc.aio channels bind to it)."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self._channels = [
            create_channel(settings.tasks_addr),
            create_channel(settings.verification_addr),
        ]
        # Workers take no jobs while either peer is not SERVING.
        self.gates = [
            ServingGate(self._channels[0], "tasks service"),
            ServingGate(self._channels[1], "verification service"),
        ]
        self.pipeline = VerificationPipeline(
            tasks_pb2_grpc.TaskServiceStub(self._channels[0]),
            engine_pb2_grpc.VerificationEngineServiceStub(self._channels[1]),
            worker_id=worker_id,
            retry_budget_seconds=settings.retry_budget_seconds,
            retry_base_seconds=settings.retry_base_seconds,
            max_deliveries=settings.job_max_deliveries,
            call_timeout_seconds=settings.call_timeout_seconds,
            verify_timeout_seconds=settings.verify_timeout_seconds,
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
