"""The worker path of the tasks service (TaskWorkerService, issue 13/14):
batches of tasks started, deferred, completed and failed, each batch in one
statement, each item fenced by its attempt (lease) and answered on its own,
so one bad item never fails its neighbours. No grpc here: worker_server.py
maps protos to these calls and each item's error to its status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import DomainError, InvalidArgument
from shared.log import get_logger

from . import audit, lifecycle, validation
from .errors import InvalidTransition, StaleAttempt, TaskNotFound
from .feed import ChangeFeed
from .lifecycle import Refusal, Transition
from .model import (
    Completion,
    Deferral,
    EventType,
    Failure,
    ProgressReport,
    QueueState,
    ReportSummary,
    Task,
    TaskStatus,
)
from .progress import ProgressBoard
from .rows import Audit, LeaseRow
from .signing import SigningKeys, SummaryRejected, check_signature
from .store import TaskStore

log = get_logger(__name__)

MAX_BATCH = 500


@dataclass(frozen=True)
class SignedCompletion:
    """A CompleteTasks item: the signed bytes and what they say."""

    task_id: str
    attempt: int
    summary_bytes: bytes
    signature: str
    key_id: str
    # The parsed summary, or why the bytes are not one.
    summary: ReportSummary | InvalidArgument


@dataclass(frozen=True)
class ItemResult:
    """One batch item's answer: applied (error None) or why not."""

    task_id: str
    error: DomainError | None = None
    attempt: int = 0
    # GetTaskInputs: the earlier attempts of the task's current run.
    earlier_attempts: tuple[int, ...] = ()


def check_batch(size: int, field: str) -> None:
    validation.validate_batch_size(size, field, MAX_BATCH)


class WorkerApp:
    def __init__(
        self,
        store: TaskStore,
        keys: SigningKeys,
        feed: ChangeFeed,
        progress: ProgressBoard,
        *,
        max_deliveries: int,
        on_finished: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.feed = feed
        self.progress = progress
        self.max_deliveries = max_deliveries
        self.on_finished = on_finished

    # --- start -------------------------------------------------------------------

    async def start(
        self, worker_id: str, task_ids: Sequence[str], deliveries: Sequence[int]
    ) -> list[ItemResult]:
        """A new attempt for each task (one statement); a task handed out more
        than max_deliveries times is failed instead (its workers keep dying)."""
        check_batch(len(task_ids), "task_ids")
        if deliveries and len(deliveries) != len(task_ids):
            raise InvalidArgument("deliveries", "one per task id, or none")
        worker_id = validation.validate_worker_id(worker_id)
        results: dict[int, ItemResult] = {}
        to_start: list[tuple[int, str]] = []
        poisoned: list[tuple[int, str, int]] = []
        seen: set[str] = set()
        for index, raw in enumerate(task_ids):
            task_id = self._item_id(raw, f"task_ids[{index}]", seen, results, index)
            if task_id is None:
                continue
            count = deliveries[index] if deliveries else 0
            if count > self.max_deliveries:
                poisoned.append((index, task_id, count))
            else:
                to_start.append((index, task_id))
        if to_start:
            entry = audit.entry(self.store.clock, EventType.STARTED, f"worker {worker_id}")
            rows = await self.store.start_many([task_id for _, task_id in to_start], entry)
            for (index, task_id), row in zip(to_start, rows, strict=True):
                results[index] = self._started(task_id, row, worker_id)
        for index, task_id, count in poisoned:
            results[index] = await self._fail_poisoned(task_id, count)
        return [results[index] for index in range(len(task_ids))]

    def _started(self, task_id: str, row: LeaseRow, worker_id: str) -> ItemResult:
        if row.applied:
            self.progress.started(task_id, row.new_attempt)
            log.info("task.started", task_id=task_id, attempt=row.new_attempt, worker_id=worker_id)
            return ItemResult(task_id, attempt=row.new_attempt)
        # A start carries no attempt: only the status can refuse it (or no task).
        return ItemResult(task_id, self._refusal(lifecycle.START, row, 0, Refusal.STATUS))

    async def _fail_poisoned(self, task_id: str, count: int) -> ItemResult:
        message = (
            f"the queue handed this task out {count} times (more than the limit of "
            f"{self.max_deliveries}), and each delivery stopped before finishing it"
        )
        entry = audit.entry(self.store.clock, EventType.FAILED, message)
        task = await self.store.fail(task_id, message, entry)
        if task is None:
            current = await self._current(task_id)
            if current is None:
                return ItemResult(task_id, TaskNotFound(task_id))
            return ItemResult(
                task_id, InvalidTransition(task_id, current.status.value, "start", "finished")
            )
        log.error("task.poisoned", task_id=task_id, deliveries=count)
        self._finished(task.status, task.verdict, task.created_at)
        return ItemResult(task_id, InvalidTransition(task_id, task.status.value, "start"))

    # --- complete / fail / defer ---------------------------------------------------

    async def complete(self, items: Sequence[SignedCompletion | DomainError]) -> list[ItemResult]:
        """Record each verdict the engine signed, after checking the signature
        and that the summary names this task and attempt (one statement)."""
        check_batch(len(items), "tasks")
        results: dict[int, ItemResult] = {}
        checked: list[tuple[int, Completion]] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            if isinstance(item, DomainError):
                results[index] = ItemResult("", item)
                continue
            task_id = self._item_id(item.task_id, f"tasks[{index}].task", seen, results, index)
            if task_id is None:
                continue
            try:
                checked.append((index, await self._verified(task_id, item)))
            except DomainError as exc:
                if isinstance(exc, SummaryRejected):
                    log.warning("task.summary_rejected", task_id=task_id, error=str(exc))
                results[index] = ItemResult(task_id, exc)
        if checked:
            entry = audit.entry(self.store.clock, EventType.COMPLETED, "")
            rows = await self.store.complete_many([c for _, c in checked], entry)
            for (index, completion), row in zip(checked, rows, strict=True):
                results[index] = self._finish_result(
                    lifecycle.COMPLETE, completion.attempt, row, repeated=bool(row.verdict)
                )
                if row.applied:
                    self._finished(completion.status, completion.summary.verdict, row.created_at)
        return [results[index] for index in range(len(items))]

    async def _verified(self, task_id: str, item: SignedCompletion) -> Completion:
        validation.validate_attempt(item.attempt)
        key = await self.keys.key(item.key_id)
        check_signature(key, item.summary_bytes, item.signature)
        # Only now is the parsed content worth reading: it is the engine's.
        summary = item.summary
        if isinstance(summary, InvalidArgument):
            raise summary
        if summary.task_id != task_id or summary.attempt != item.attempt:
            raise SummaryRejected(
                f"the signed summary is for task {summary.task_id!r} attempt "
                f"{summary.attempt}, not this task and attempt"
            )
        summary = validation.validate_summary(summary)
        status, error = lifecycle.outcome_of(summary)
        return Completion(task_id, item.attempt, status, error, summary)

    async def fail(self, items: Sequence[Failure | DomainError]) -> list[ItemResult]:
        """FAILED for a fault of the task's own (one statement)."""
        return await self._fenced(
            items,
            lifecycle.FAIL,
            lambda valid, entry: self.store.fail_many(valid, entry),
            EventType.FAILED,
            repeated=lambda row: row.status is TaskStatus.FAILED and not row.verdict,
        )

    async def defer(self, items: Sequence[Deferral | DomainError]) -> list[ItemResult]:
        """WAITING with the reason, for a transient fault (one statement)."""
        return await self._fenced(
            items,
            lifecycle.DEFER,
            lambda valid, entry: self.store.defer_many(valid, entry),
            EventType.WAITING,
            repeated=lambda row: row.status is TaskStatus.WAITING,
        )

    async def _fenced(
        self,
        items: Sequence[Failure | Deferral | DomainError],
        transition: Transition,
        run: Callable[[list[Any], Audit], Awaitable[list[LeaseRow]]],
        event: EventType,
        *,
        repeated: Callable[[LeaseRow], bool],
    ) -> list[ItemResult]:
        check_batch(len(items), "tasks")
        results: dict[int, ItemResult] = {}
        valid: list[tuple[int, Failure | Deferral]] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            if isinstance(item, DomainError):
                results[index] = ItemResult("", item)
                continue
            task_id = self._item_id(item.task_id, f"tasks[{index}].task", seen, results, index)
            if task_id is not None:
                valid.append((index, item))
        if valid:
            entry = audit.entry(self.store.clock, event, "")
            rows = await run([item for _, item in valid], entry)
            for (index, item), row in zip(valid, rows, strict=True):
                results[index] = self._finish_result(
                    transition, item.attempt, row, repeated=repeated(row)
                )
                if row.applied and transition is lifecycle.FAIL:
                    self._finished(TaskStatus.FAILED, "", row.created_at)
        return [results[index] for index in range(len(items))]

    def _finish_result(
        self, transition: Transition, attempt: int, row: LeaseRow, *, repeated: bool
    ) -> ItemResult:
        if row.applied:
            self.progress.forget(row.task_id)
            log.info(f"task.{transition.event.value}", task_id=row.task_id, attempt=attempt)
            return ItemResult(row.task_id, attempt=attempt)
        refusal = lifecycle.lease_outcome(transition, attempt, _found(row), repeated=repeated)
        if refusal is None:
            return ItemResult(row.task_id, attempt=attempt)  # an idempotent repeat
        return ItemResult(row.task_id, self._refusal(transition, row, attempt, refusal))

    # --- progress and inputs ---------------------------------------------------------

    async def report_progress(
        self, items: Sequence[ProgressReport | DomainError]
    ) -> list[ItemResult]:
        """Held in memory and published to watchers; written at most once a
        second per task, never as an audit row."""
        check_batch(len(items), "progress")
        results: dict[int, ItemResult] = {}
        due: list[tuple[int, ProgressReport]] = []
        for index, item in enumerate(items):
            if isinstance(item, DomainError):
                results[index] = ItemResult("", item)
                continue
            if self.progress.offer(item.task_id, item.attempt, item.progress, item.message):
                due.append((index, item))
            else:
                results[index] = ItemResult(item.task_id, attempt=item.attempt)
            self.feed.publish(item.task_id)
        if due:
            entry = audit.entry(self.store.clock, EventType.PROGRESS, "")
            rows = await self.store.write_progress([p for _, p in due], entry)
            for (index, report), row in zip(due, rows, strict=True):
                # Not applied on the current attempt of an active task: it had
                # that progress or more already (progress never goes backwards).
                current = row.attempt == report.attempt and row.status is TaskStatus.ACTIVE
                if row.applied or current:
                    results[index] = ItemResult(row.task_id, attempt=report.attempt)
                else:
                    self.progress.forget(row.task_id)
                    results[index] = ItemResult(
                        row.task_id, self._refusal(lifecycle.PROGRESS, row, report.attempt)
                    )
        return [results[index] for index in range(len(items))]

    async def inputs(
        self, items: Sequence[tuple[str, int]]
    ) -> list[tuple[ItemResult, Task | None]]:
        """The started tasks with their evidence, read once (one statement); a
        stale attempt gets FAILED_PRECONDITION, so no report is written for it.
        Each current one names the earlier attempts of its run (the engine may
        adopt a report one of them stored)."""
        check_batch(len(items), "tasks")
        ids: dict[int, str] = {}
        errors: dict[int, DomainError] = {}
        for index, (raw, attempt) in enumerate(items):
            try:
                ids[index] = validation.validate_task_id(raw, f"tasks[{index}].task_id")
                validation.validate_attempt(attempt, f"tasks[{index}].attempt")
            except DomainError as exc:
                errors[index] = exc
        tasks = await self.store.get_tasks(sorted(set(ids.values())), full=True) if ids else []
        found = {task.id: task for task in tasks}
        answers: list[tuple[ItemResult, Task | None]] = []
        for index, (raw, attempt) in enumerate(items):
            if index in errors:
                answers.append((ItemResult(raw, errors[index]), None))
                continue
            task = found.get(ids[index])
            if task is None:
                answers.append((ItemResult(ids[index], TaskNotFound(ids[index])), None))
            elif task.attempts != attempt:
                log.warning(
                    "task.stale_attempt",
                    task_id=task.id,
                    attempt=attempt,
                    current=task.attempts,
                    call="inputs",
                )
                answers.append(
                    (ItemResult(task.id, StaleAttempt(task.id, attempt, task.attempts)), None)
                )
            elif task.status is not TaskStatus.ACTIVE:
                answers.append(
                    (
                        ItemResult(
                            task.id,
                            InvalidTransition(
                                task.id,
                                task.status.value,
                                "verify",
                                "only an active task is verified",
                            ),
                        ),
                        None,
                    )
                )
            else:
                earlier = lifecycle.earlier_attempts(task.run_base_attempt, attempt)
                answers.append(
                    (ItemResult(task.id, attempt=attempt, earlier_attempts=earlier), task)
                )
        return answers

    # --- the queue's durable state (QueueStateService) --------------------------------

    async def queue_state(self, queue_name: str) -> QueueState:
        return await self.store.get_queue_state(validation.validate_queue_name(queue_name))

    async def set_queue_paused(self, queue_name: str, paused: bool, changed_by: str) -> QueueState:
        name = validation.validate_queue_name(queue_name)
        who = (changed_by or "operator")[: validation.MAX_CHANGED_BY]
        state = await self.store.set_queue_paused(name, paused, who)
        log.info("queue.pause_changed", queue=name, paused=paused, changed_by=who)
        return state

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _item_id(
        raw: str, field: str, seen: set[str], results: dict[int, ItemResult], index: int
    ) -> str | None:
        """The item's canonical task id; None (with its error recorded) when it is
        malformed or repeats an earlier item of the batch."""
        try:
            task_id = validation.validate_task_id(raw, field)
        except DomainError as exc:
            results[index] = ItemResult(raw, exc)
            return None
        if task_id in seen:
            results[index] = ItemResult(task_id, InvalidArgument(field, "repeated in this batch"))
            return None
        seen.add(task_id)
        return task_id

    def _refusal(
        self, transition: Transition, row: LeaseRow, attempt: int, why: Refusal | None = None
    ) -> DomainError:
        if why is None:
            why = lifecycle.lease_outcome(transition, attempt, _found(row)) or Refusal.STATUS
        if why is Refusal.NOT_FOUND or row.status is None:
            return TaskNotFound(row.task_id)
        if why is Refusal.STALE:
            log.warning(
                "task.stale_attempt",
                task_id=row.task_id,
                attempt=attempt,
                current=row.attempt,
                call=transition.operation,
            )
            return StaleAttempt(row.task_id, attempt, row.attempt)
        return InvalidTransition(
            row.task_id, row.status.value, transition.operation, transition.hint
        )

    async def _current(self, task_id: str) -> Task | None:
        try:
            return await self.store.get_task(task_id)
        except TaskNotFound:
            return None

    def _finished(self, status: TaskStatus, verdict: str, created_at: datetime | None) -> None:
        """Count a task this call finished (metrics), once, on the transition."""
        if self.on_finished is not None:
            now = self.store.clock()
            seconds = (now - created_at).total_seconds() if created_at else None
            self.on_finished(status.value, verdict, seconds)


def _found(row: LeaseRow) -> tuple[TaskStatus, int] | None:
    return (row.status, row.attempt) if row.status is not None else None
