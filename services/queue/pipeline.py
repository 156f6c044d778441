"""A batch of jobs, end to end, over the internal worker contract. The same
pipeline runs in the worker processes (Redis mode) and in the queue service's
in-process worker (embedded mode).

Calls per batch, whatever its size (at most QUEUE_CONCURRENCY jobs):
1. TaskWorkerService.StartTasks: an attempt (lease) per task, in one statement.
   A task finished, cancelled or unknown is skipped (`job.skipped`).
2. VerificationEngineService.VerifyTasks with the leases, streamed back one
   result per task (the engine reads each task's inputs itself, once), and
   ReportProgress(30, "verifying evidence") beside it.
3. CompleteTasks for the verified ones (the engine's signed summaries, tried
   again on a transient fault for the whole retry budget: the reports are
   stored, and the task must not be verified again),
   FailTasks for a task's own faults (INVALID_ARGUMENT, a refused summary),
   DeferTasks for transient faults (the task shows WAITING with the reason) and
   a delayed run of the job. A stale attempt (FAILED_PRECONDITION: a newer
   attempt overtook this one, or the task was cancelled) is dropped and logged
   `job.stale`, never `job.completed`, never counted.

Transient faults are retried with the shared capped, jittered backoff within a
time budget (RETRY_BUDGET_SECONDS) counted from the job's first fault; past it
the task fails with the fault and its attempt count. A failed check is a
result (CompleteTasks records FAILED), never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2
from verifier.tasks.v1 import worker_pb2, worker_pb2_grpc
from verifier.verification.v1 import engine_pb2, engine_pb2_grpc, verification_pb2

from shared.log import get_logger
from shared.retry import Backoff, Outage, retry_call
from shared.security import internal_channel

from . import policy
from .health import ServingGate
from .model import Job, JobResult, Outcome
from .settings import QueueSettings

log = get_logger(__name__)

_Reply = TypeVar("_Reply")

PROGRESS_VERIFYING = 30
# A CompleteTasks (or FailTasks) that meets a transient fault is tried again
# with this backoff for the whole retry budget (RETRY_BUDGET_SECONDS) before
# the batch is deferred: the worker holds signed summaries, and the job stays
# its own meanwhile (the heartbeat keeps re-claiming the jobs in hand, and a
# stale attempt is refused by the tasks service, FAILED_PRECONDITION).
RECORD_BACKOFF = Backoff(base_seconds=0.2, cap_seconds=3.0)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and policy.is_transient(exc.code().name)


def _code_name(code: int) -> str:
    return str(code_pb2.Code.Name(code))


def _describe(step: str, exc: grpc.aio.AioRpcError) -> str:
    return f"{step}: {exc.code().name}: {exc.details() or ''}".rstrip(": ")


@dataclass
class _Lease:
    """A started job of the batch: its index, the job and its attempt."""

    index: int
    job: Job
    attempt: int


class VerificationPipeline:
    """The BatchHandler of the real pipeline, over gRPC to the tasks and verification services."""

    def __init__(
        self,
        worker: worker_pb2_grpc.TaskWorkerServiceStub,
        engine: engine_pb2_grpc.VerificationEngineServiceStub,
        *,
        worker_id: str,
        retry_budget_seconds: float,
        retry_base_seconds: float,
        call_timeout_seconds: float,
        verify_timeout_seconds: float,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.worker = worker
        self.engine = engine
        self.worker_id = worker_id
        self.retry_budget_seconds = retry_budget_seconds
        self.backoff = policy.retry_backoff(retry_base_seconds)
        self.call_timeout = call_timeout_seconds
        self.verify_timeout = verify_timeout_seconds
        self.rand = rand
        self.clock = clock
        self.sleep = sleep

    async def process_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(jobs)
        leases = await self._start(jobs, results)
        if leases:
            await self._verify_and_record(leases, results)
        return [r or JobResult(Outcome.SKIPPED, "no result") for r in results]

    # --- 1. start -------------------------------------------------------------------

    async def _start(self, jobs: Sequence[Job], results: list[JobResult | None]) -> list[_Lease]:
        request = worker_pb2.StartTasksRequest(
            worker_id=self.worker_id,
            task_ids=[job.task_id for job in jobs],
            deliveries=[job.deliveries for job in jobs],
        )
        try:
            reply = await self.worker.StartTasks(request, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            error = _describe("StartTasks", exc)
            for index, job in enumerate(jobs):
                results[index] = self._not_started(job, exc.code().name, error)
            return []
        leases: list[_Lease] = []
        for index, (job, item) in enumerate(zip(jobs, reply.tasks, strict=True)):
            code = item.status.code
            if code == code_pb2.OK:
                leases.append(_Lease(index, job, item.attempt))
                continue
            error = f"StartTasks: {_code_name(code)}: {item.status.message}"
            results[index] = self._not_started(job, _code_name(code), error)
        for lease in leases:
            log.info("job.started", task_id=lease.job.task_id, attempt=lease.attempt)
        return leases

    def _not_started(self, job: Job, code: str, error: str) -> JobResult:
        """A job StartTasks did not start: nothing of the task changed."""
        if policy.is_transient(code):
            # The task is still QUEUED: run the job again later (no budget: it
            # has not cost the task anything yet, and the gates hold the
            # workers while the tasks service is down).
            delay = self.backoff.delay(job.attempt, self.rand)
            log.warning("job.start_retry", task_id=job.task_id, error=error, retry_in=delay)
            return JobResult(Outcome.RETRY, error, delay_seconds=delay)
        log.info("job.skipped", task_id=job.task_id, reason=error)
        return JobResult(Outcome.SKIPPED, error)

    # --- 2. verify ------------------------------------------------------------------

    async def _verify_and_record(
        self, leases: list[_Lease], results: list[JobResult | None]
    ) -> None:
        progress = asyncio.ensure_future(self._progress(leases))
        try:
            verified = await self._verify(leases)
        finally:
            with contextlib.suppress(Exception):
                await progress
        completions: list[tuple[_Lease, verification_pb2.SignedSummary]] = []
        failures: list[tuple[_Lease, str]] = []
        deferrals: list[tuple[_Lease, str]] = []
        for lease in leases:
            code, message, summary = verified[lease.job.task_id]
            if code == "OK" and summary is not None:
                completions.append((lease, summary))
            elif code == "FAILED_PRECONDITION":
                results[lease.index] = self._stale(lease, message)
            elif policy.is_transient(code):
                deferrals.append((lease, message))
            else:
                failures.append((lease, message))
        if completions:
            deferrals.extend(await self._complete(completions, results, failures))
        await self._defer_or_fail(deferrals, results, failures)
        if failures:
            await self._fail(failures, results)

    async def _verify(
        self, leases: list[_Lease]
    ) -> dict[str, tuple[str, str, verification_pb2.SignedSummary | None]]:
        request = engine_pb2.VerifyTasksRequest(
            tasks=[
                engine_pb2.TaskLease(task_id=lease.job.task_id, attempt=lease.attempt)
                for lease in leases
            ]
        )
        got: dict[str, tuple[str, str, verification_pb2.SignedSummary | None]] = {}
        missing = ("UNAVAILABLE", "VerifyTasks: the stream ended without this task's result")
        try:
            async for reply in self.engine.VerifyTasks(request, timeout=self.verify_timeout):
                code = _code_name(reply.status.code)
                message = f"VerifyTasks: {code}: {reply.status.message}"
                summary = reply.signed_summary if reply.HasField("signed_summary") else None
                got[reply.task.task_id] = (code, message, summary)
        except grpc.aio.AioRpcError as exc:
            missing = (exc.code().name, _describe("VerifyTasks", exc))
        for lease in leases:
            got.setdefault(lease.job.task_id, (missing[0], missing[1], None))
        return got

    async def _progress(self, leases: list[_Lease]) -> None:
        """Progress is for the client's eyes: a failed update never fails a job."""
        request = worker_pb2.ReportProgressRequest(
            progress=[
                worker_pb2.TaskProgress(
                    task=self._attempt(lease),
                    progress=PROGRESS_VERIFYING,
                    message="verifying evidence",
                )
                for lease in leases
            ]
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.worker.ReportProgress(request, timeout=self.call_timeout)

    # --- 3. record ------------------------------------------------------------------

    async def _complete(
        self,
        completions: list[tuple[_Lease, verification_pb2.SignedSummary]],
        results: list[JobResult | None],
        failures: list[tuple[_Lease, str]],
    ) -> list[tuple[_Lease, str]]:
        """CompleteTasks, tried again on a transient fault (idempotent per
        attempt); returns what is left to defer."""
        request = worker_pb2.CompleteTasksRequest(
            worker_id=self.worker_id,
            tasks=[
                worker_pb2.TaskCompletion(task=self._attempt(lease), signed_summary=summary)
                for lease, summary in completions
            ],
        )
        reply = await self._call_with_retries("CompleteTasks", self.worker.CompleteTasks, request)
        if isinstance(reply, str):
            return [(lease, reply) for lease, _ in completions]
        left: list[tuple[_Lease, str]] = []
        for (lease, summary), ack in zip(completions, reply.acks, strict=True):
            code = _code_name(ack.status.code)
            message = f"CompleteTasks: {code}: {ack.status.message}"
            if code == "OK":
                verdict = _verdict(summary)
                log.info(
                    "job.completed",
                    task_id=lease.job.task_id,
                    attempt=lease.attempt,
                    verdict=verdict,
                )
                results[lease.index] = JobResult(Outcome.COMPLETED, verdict)
            elif code == "FAILED_PRECONDITION":
                results[lease.index] = self._stale(lease, message)
            elif policy.is_transient(code):
                left.append((lease, message))
            else:
                # A summary the tasks service refused (its signature): the
                # task must not stay ACTIVE; fail it with why.
                log.error("job.summary_refused", task_id=lease.job.task_id, error=message)
                failures.append((lease, f"the signed summary was refused: {message}"))
        return left

    async def _defer_or_fail(
        self,
        deferrals: list[tuple[_Lease, str]],
        results: list[JobResult | None],
        failures: list[tuple[_Lease, str]],
    ) -> None:
        now = self.clock()
        waiting: list[tuple[_Lease, str, float, float]] = []
        for lease, error in deferrals:
            first_fault_at = lease.job.first_fault_at or now
            if not policy.within_budget(first_fault_at, now, self.retry_budget_seconds):
                waited = round(now - first_fault_at)
                failures.append(
                    (lease, f"gave up after {lease.attempt} attempts over {waited} s: {error}")
                )
                continue
            delay = self.backoff.delay(lease.job.attempt, self.rand)
            waiting.append((lease, error, delay, first_fault_at))
        if not waiting:
            return
        request = worker_pb2.DeferTasksRequest(
            worker_id=self.worker_id,
            tasks=[
                worker_pb2.TaskDeferral(
                    task=self._attempt(lease),
                    reason=policy.truncate_error(error),
                    retry_at=_timestamp(now + delay),
                )
                for lease, error, delay, _ in waiting
            ],
        )
        try:
            reply = await self.worker.DeferTasks(request, timeout=self.call_timeout)
            acks = [_code_name(ack.status.code) for ack in reply.acks]
        except grpc.aio.AioRpcError as exc:
            # Not recorded: the task stays ACTIVE under this attempt and the
            # job runs again all the same (its next start opens a new attempt).
            log.warning("batch.defer_unrecorded", error=_describe("DeferTasks", exc))
            acks = ["UNAVAILABLE"] * len(waiting)
        for (lease, error, delay, first_fault_at), code in zip(waiting, acks, strict=True):
            if code == "FAILED_PRECONDITION":
                results[lease.index] = self._stale(lease, f"DeferTasks: {code}")
                continue
            log.warning(
                "job.waiting",
                task_id=lease.job.task_id,
                attempt=lease.attempt,
                retry_in=round(delay, 3),
                error=error,
            )
            results[lease.index] = JobResult(
                Outcome.RETRY, error, delay_seconds=delay, first_fault_at=first_fault_at
            )

    async def _fail(
        self, failures: list[tuple[_Lease, str]], results: list[JobResult | None]
    ) -> None:
        request = worker_pb2.FailTasksRequest(
            worker_id=self.worker_id,
            tasks=[
                worker_pb2.TaskFailure(
                    task=self._attempt(lease), error_message=policy.truncate_error(error)
                )
                for lease, error in failures
            ],
        )
        reply = await self._call_with_retries("FailTasks", self.worker.FailTasks, request)
        codes = (
            [_code_name(ack.status.code) for ack in reply.acks]
            if not isinstance(reply, str)
            else ["UNAVAILABLE"] * len(failures)
        )
        for (lease, error), code in zip(failures, codes, strict=True):
            if code == "OK":
                log.warning(
                    "job.failed", task_id=lease.job.task_id, attempt=lease.attempt, error=error
                )
                results[lease.index] = JobResult(Outcome.FAILED, error)
            elif code == "FAILED_PRECONDITION":
                results[lease.index] = self._stale(lease, f"FailTasks: {code}")
            else:
                # Not recorded: keep the job (the task must not stay ACTIVE
                # forever); it runs again at the next delay.
                delay = self.backoff.delay(lease.job.attempt, self.rand)
                log.warning("job.fail_unrecorded", task_id=lease.job.task_id, retry_in=delay)
                results[lease.index] = JobResult(Outcome.RETRY, error, delay_seconds=delay)

    async def _call_with_retries(
        self,
        name: str,
        call: Callable[..., Awaitable[_Reply]],
        request: object,
    ) -> _Reply | str:
        """An idempotent batch call (per attempt), tried again on a transient
        fault with the shared backoff for the whole retry budget, counted from
        its first fault; the reply, or the last fault's description. The outage
        is logged once when it starts and once when it ends."""
        outage = Outage(name, event="batch.record")
        try:
            return await retry_call(
                name,
                functools.partial(call, request, timeout=self.call_timeout),
                retry_on=(grpc.aio.AioRpcError,),
                retry_if=_transient,
                backoff=RECORD_BACKOFF,
                budget_seconds=self.retry_budget_seconds,
                outage=outage,
                clock=self.clock,
                sleep=self.sleep,
                rand=self.rand,
            )
        except grpc.aio.AioRpcError as exc:
            error = _describe(name, exc)
            if policy.is_transient(exc.code().name):
                log.warning("batch.record_gave_up", call=name, error=error, tries=outage.failures)
            return error

    def _stale(self, lease: _Lease, message: str) -> JobResult:
        log.info("job.stale", task_id=lease.job.task_id, attempt=lease.attempt, reason=message)
        return JobResult(Outcome.SKIPPED, f"stale attempt: {message}")

    @staticmethod
    def _attempt(lease: _Lease) -> worker_pb2.TaskAttempt:
        return worker_pb2.TaskAttempt(task_id=lease.job.task_id, attempt=lease.attempt)


def _verdict(signed: verification_pb2.SignedSummary) -> str:
    summary = verification_pb2.ReportSummary()
    with contextlib.suppress(Exception):
        summary.ParseFromString(signed.summary)
    return str(verification_pb2.Verdict.Name(summary.verdict)).removeprefix("VERDICT_").lower()


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class PipelineConnection:
    """The pipeline with its own channels to the tasks and verification services,
    and the gates that follow their health. Build it inside the running event
    loop (grpc.aio channels bind to it)."""

    def __init__(self, settings: QueueSettings, worker_id: str) -> None:
        # The workers' calls are internal RPCs: the peers' mutual-TLS ports,
        # with the queue's certificate (plain public ports when auth is off).
        self._channels = [
            internal_channel(settings, "tasks", "queue"),
            internal_channel(settings, "verification", "queue"),
        ]
        # Workers take no jobs while either peer is not SERVING.
        self.gates = [
            ServingGate(self._channels[0], "tasks service"),
            ServingGate(self._channels[1], "verification service"),
        ]
        self.pipeline = VerificationPipeline(
            worker_pb2_grpc.TaskWorkerServiceStub(self._channels[0]),
            engine_pb2_grpc.VerificationEngineServiceStub(self._channels[1]),
            worker_id=worker_id,
            retry_budget_seconds=settings.retry_budget_seconds,
            retry_base_seconds=settings.retry_base_seconds,
            call_timeout_seconds=settings.call_timeout_seconds,
            verify_timeout_seconds=settings.verify_timeout_seconds,
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
