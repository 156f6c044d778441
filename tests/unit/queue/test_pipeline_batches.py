"""The pipeline's decisions per batch item, against scripted peers: what is
completed, failed, deferred (WAITING) or dropped as stale, and the retry
budget. The peers are in-memory stand-ins for the two internal contracts (the
real services are exercised end to end in tests/e2e and tests/fault)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, status_pb2
from verifier.tasks.v1 import worker_pb2
from verifier.verification.v1 import engine_pb2, verification_pb2

from services.queue.model import Job, Outcome
from services.queue.pipeline import VerificationPipeline


def _status(code: int, message: str = "") -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


def _signed(task_id: str, attempt: int, verdict: int) -> verification_pb2.SignedSummary:
    summary = verification_pb2.ReportSummary(task_id=task_id, attempt=attempt, verdict=verdict)
    return verification_pb2.SignedSummary(
        summary=summary.SerializeToString(), signature="00", key_id="k"
    )


class _Worker:
    """TaskWorkerService as scripted per task: start codes, ack codes."""

    def __init__(
        self, start: dict[str, int] | None = None, complete: dict[str, int] | None = None
    ) -> None:
        self.start = start or {}
        self.complete = complete or {}
        self.calls: list[tuple[str, list[str]]] = []
        self.deferred: list[worker_pb2.TaskDeferral] = []
        self.failed: list[worker_pb2.TaskFailure] = []

    async def StartTasks(self, request: worker_pb2.StartTasksRequest, **call: Any) -> Any:
        self.calls.append(("StartTasks", list(request.task_ids)))
        return worker_pb2.StartTasksResponse(
            tasks=[
                worker_pb2.StartedTask(
                    task_id=t,
                    status=_status(self.start.get(t, code_pb2.OK)),
                    attempt=3 if self.start.get(t, code_pb2.OK) == code_pb2.OK else 0,
                )
                for t in request.task_ids
            ]
        )

    async def ReportProgress(self, request: Any, **call: Any) -> Any:
        return worker_pb2.ReportProgressResponse()

    def _acks(self, items: Sequence[Any], codes: dict[str, int]) -> list[worker_pb2.TaskAck]:
        return [
            worker_pb2.TaskAck(task_id=i.task.task_id, status=_status(codes.get(i.task.task_id, 0)))
            for i in items
        ]

    async def CompleteTasks(self, request: worker_pb2.CompleteTasksRequest, **call: Any) -> Any:
        self.calls.append(("CompleteTasks", [t.task.task_id for t in request.tasks]))
        return worker_pb2.CompleteTasksResponse(acks=self._acks(request.tasks, self.complete))

    async def FailTasks(self, request: worker_pb2.FailTasksRequest, **call: Any) -> Any:
        self.calls.append(("FailTasks", [t.task.task_id for t in request.tasks]))
        self.failed.extend(request.tasks)
        return worker_pb2.FailTasksResponse(acks=self._acks(request.tasks, {}))

    async def DeferTasks(self, request: worker_pb2.DeferTasksRequest, **call: Any) -> Any:
        self.calls.append(("DeferTasks", [t.task.task_id for t in request.tasks]))
        self.deferred.extend(request.tasks)
        return worker_pb2.DeferTasksResponse(acks=self._acks(request.tasks, {}))


class _Engine:
    """VerificationEngineService streaming a scripted code per task."""

    def __init__(self, codes: dict[str, int], *, break_after: int | None = None) -> None:
        self.codes = codes
        self.break_after = break_after
        self.leases: list[engine_pb2.TaskLease] = []

    def VerifyTasks(
        self, request: engine_pb2.VerifyTasksRequest, timeout: float
    ) -> AsyncIterator[Any]:
        self.leases.extend(request.tasks)

        async def stream() -> AsyncIterator[engine_pb2.VerifyTasksResponse]:
            for n, lease in enumerate(request.tasks):
                if self.break_after is not None and n >= self.break_after:
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.aio.Metadata(),
                        grpc.aio.Metadata(),
                        "gone",
                    )
                code = self.codes.get(lease.task_id, code_pb2.OK)
                reply = engine_pb2.VerifyTasksResponse(task=lease, status=_status(code, "why"))
                if code == code_pb2.OK:
                    reply.signed_summary.CopyFrom(
                        _signed(lease.task_id, lease.attempt, verification_pb2.VERDICT_PASSED)
                    )
                yield reply

        return stream()


def _pipeline(worker: _Worker, engine: _Engine, now: float = 10_000.0) -> VerificationPipeline:
    return VerificationPipeline(
        worker,  # type: ignore[arg-type]
        engine,  # type: ignore[arg-type]
        worker_id="w",
        retry_budget_seconds=600.0,
        retry_base_seconds=1.0,
        call_timeout_seconds=1.0,
        verify_timeout_seconds=1.0,
        rand=lambda: 0.5,
        clock=lambda: now,
    )


def _jobs(*task_ids: str, first_fault_at: float = 0.0) -> list[Job]:
    return [Job(f"job-{t}", t, first_fault_at=first_fault_at) for t in task_ids]


async def test_a_batch_costs_one_call_of_each_kind_and_verifies_with_the_leases() -> None:
    worker, engine = _Worker(), _Engine({})
    results = await _pipeline(worker, engine).process_batch(_jobs("a", "b", "c"))
    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert [name for name, _ in worker.calls] == ["StartTasks", "CompleteTasks"]
    assert [(x.task_id, x.attempt) for x in engine.leases] == [("a", 3), ("b", 3), ("c", 3)]


async def test_each_item_gets_its_own_outcome_and_one_bad_task_spares_its_neighbours() -> None:
    worker = _Worker(start={"gone": code_pb2.NOT_FOUND, "done": code_pb2.FAILED_PRECONDITION})
    engine = _Engine(
        {
            "bad": code_pb2.INVALID_ARGUMENT,
            "down": code_pb2.UNAVAILABLE,
            "stale": code_pb2.FAILED_PRECONDITION,
        }
    )
    jobs = _jobs("ok", "gone", "done", "bad", "down", "stale")
    results = await _pipeline(worker, engine).process_batch(jobs)
    assert [r.outcome for r in results] == [
        Outcome.COMPLETED,
        Outcome.SKIPPED,
        Outcome.SKIPPED,
        Outcome.FAILED,
        Outcome.RETRY,
        Outcome.SKIPPED,
    ]
    assert [t.task.task_id for t in worker.failed] == ["bad"]
    assert [t.task.task_id for t in worker.deferred] == ["down"]
    assert worker.deferred[0].reason.startswith("VerifyTasks: UNAVAILABLE")
    # The budget counts from this first fault, carried to the next run.
    assert results[4].first_fault_at == 10_000.0 and results[4].delay_seconds == 1.0


async def test_a_stale_completion_is_dropped_never_completed() -> None:
    worker = _Worker(complete={"overtaken": code_pb2.FAILED_PRECONDITION})
    results = await _pipeline(worker, _Engine({})).process_batch(_jobs("overtaken", "fine"))
    assert [r.outcome for r in results] == [Outcome.SKIPPED, Outcome.COMPLETED]
    assert "stale" in results[0].detail


async def test_a_refused_summary_fails_the_task_rather_than_leave_it_active() -> None:
    worker = _Worker(complete={"forged": code_pb2.INVALID_ARGUMENT})
    (result,) = await _pipeline(worker, _Engine({})).process_batch(_jobs("forged"))
    assert result.outcome is Outcome.FAILED
    assert [t.task.task_id for t in worker.failed] == ["forged"]


async def test_past_the_budget_a_transient_fault_fails_the_task_with_its_attempts() -> None:
    worker = _Worker()
    engine = _Engine({"late": code_pb2.UNAVAILABLE})
    jobs = _jobs("late", first_fault_at=10_000.0 - 601)
    (result,) = await _pipeline(worker, engine).process_batch(jobs)
    assert result.outcome is Outcome.FAILED
    (failure,) = worker.failed
    assert failure.error_message.startswith("gave up after 3 attempts over 601 s: VerifyTasks")
    assert worker.deferred == []


async def test_a_stream_broken_midway_defers_the_tasks_without_a_result() -> None:
    worker = _Worker()
    engine = _Engine({}, break_after=1)
    results = await _pipeline(worker, engine).process_batch(_jobs("first", "second"))
    assert [r.outcome for r in results] == [Outcome.COMPLETED, Outcome.RETRY]
    assert [t.task.task_id for t in worker.deferred] == ["second"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT])
async def test_a_start_call_that_fails_whole_changes_no_task(code: grpc.StatusCode) -> None:
    class Down(_Worker):
        async def StartTasks(self, request: Any, **call: Any) -> Any:
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x")

    worker = Down()
    results = await _pipeline(worker, _Engine({})).process_batch(_jobs("a", "b"))
    expected = Outcome.RETRY if code == grpc.StatusCode.UNAVAILABLE else Outcome.SKIPPED
    assert [r.outcome for r in results] == [expected, expected]
    assert worker.deferred == [] and worker.failed == []


class _Clock:
    """A fake clock that the pipeline's sleeps advance."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _TasksDownFor(_Worker):
    """CompleteTasks fails with `code` for `seconds` of the fake clock, then answers."""

    def __init__(self, clock: _Clock, seconds: float, code: grpc.StatusCode, **kw: Any) -> None:
        super().__init__(**kw)
        self.clock = clock
        self.until = clock.now + seconds
        self.code = code
        self.tries = 0

    async def CompleteTasks(self, request: worker_pb2.CompleteTasksRequest, **call: Any) -> Any:
        self.tries += 1
        if self.clock.now < self.until:
            raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x")
        return await super().CompleteTasks(request, **call)


def _timed_pipeline(worker: _Worker, clock: _Clock, budget: float = 600.0) -> VerificationPipeline:
    return VerificationPipeline(
        worker,  # type: ignore[arg-type]
        _Engine({}),  # type: ignore[arg-type]
        worker_id="w",
        retry_budget_seconds=budget,
        retry_base_seconds=1.0,
        call_timeout_seconds=1.0,
        verify_timeout_seconds=1.0,
        rand=lambda: 0.5,
        clock=clock,
        sleep=clock.sleep,
    )


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_complete_is_retried_through_a_long_outage_of_the_tasks_service(
    code: grpc.StatusCode,
) -> None:
    """A worker holding signed summaries waits the outage out (within the
    budget) with the shared backoff, instead of deferring the batch and having
    it verified again under a new attempt."""
    clock = _Clock()
    worker = _TasksDownFor(clock, 120.0, code)
    results = await _timed_pipeline(worker, clock).process_batch(_jobs("a", "b"))
    assert [r.outcome for r in results] == [Outcome.COMPLETED, Outcome.COMPLETED]
    assert worker.deferred == [] and worker.failed == []
    assert worker.tries > 5 and clock.now >= worker.until
    # Capped backoff: looked at again at least every RECORD_BACKOFF cap.
    assert max(clock.sleeps) <= 3.0


async def test_past_the_budget_a_complete_that_still_fails_defers_the_batch() -> None:
    clock = _Clock()
    worker = _TasksDownFor(clock, 10_000.0, grpc.StatusCode.UNAVAILABLE)
    (result,) = await _timed_pipeline(worker, clock, budget=60.0).process_batch(_jobs("a"))
    assert result.outcome is Outcome.RETRY
    assert [t.task.task_id for t in worker.deferred] == ["a"]
    assert 55.0 <= clock.now - 10_000.0 <= 60.0


async def test_a_stale_attempt_met_after_the_outage_is_dropped_never_completed() -> None:
    clock = _Clock()
    worker = _TasksDownFor(
        clock, 30.0, grpc.StatusCode.UNAVAILABLE, complete={"a": code_pb2.FAILED_PRECONDITION}
    )
    (result,) = await _timed_pipeline(worker, clock).process_batch(_jobs("a"))
    assert result.outcome is Outcome.SKIPPED and "stale" in result.detail
    assert worker.deferred == [] and worker.failed == []
