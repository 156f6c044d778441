"""Operator actions on tasks: retry one or all failed, the dead letters, and
retention (periodic, one replica at a time under an advisory lock). No grpc here.

Retention removes a batch in two steps: the tasks' reports first (every
attempt's, through the verification service), then the rows of the tasks whose
reports are gone, with one audit row each. A task whose reports could not be
deleted keeps its row, so the next pass tries again: no report outlives its
task unnoticed. An app's latest task is never selected."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from shared.errors import FailedPrecondition, InvalidArgument
from shared.log import get_logger

from . import validation
from .apps_store import RETENTION_LOCK_KEY, AppStore
from .dispatch import Dispatcher
from .model import AppConfigType, Cursor, ListFilter, Task, TaskStatus
from .operations import AttemptError, RetentionPolicy, attempt_errors
from .ops_store import OpsStore
from .paging import decode_page_token, encode_page_token
from .store import TaskStore

log = get_logger(__name__)
MAX_RETRY_ALL = 100_000

# Deletes every report of each task; returns task id -> reports deleted for the
# tasks whose reports are all gone (verification_client.ReportDeleter.delete).
DeleteReports = Callable[[Sequence[str]], Awaitable[dict[str, int]]]


class TaskOperations:
    def __init__(
        self,
        ops: OpsStore,
        tasks: TaskStore,
        dispatcher: Dispatcher,
        locks: AppStore,
        policy: RetentionPolicy,
        clock: Callable[[], datetime],
        interval_seconds: float = 600.0,
        delete_reports: DeleteReports | None = None,
    ) -> None:
        self.ops = ops
        self.tasks = tasks
        self.dispatcher = dispatcher
        self.locks = locks
        self.policy = policy
        self.clock = clock
        self.interval_seconds = interval_seconds
        # None: the reports are left in place (tests of the rows alone).
        self.delete_reports = delete_reports

    async def retry(self, task_id: str, reason: str) -> Task:
        task_id = validation.validate_task_id(task_id)
        reason = validation.validate_reason(reason) or "retried by an operator"
        done = await self.ops.retry([task_id], reason, self.clock())
        if not done:
            current = await self.tasks.get_task(task_id)  # NotFound when unknown
            raise FailedPrecondition(
                f"task {task_id} is {current.status.value}: only failed or cancelled "
                "tasks are retried"
            )
        self.dispatcher.submit(task_id)
        log.info("task.retried", task_id=task_id)
        return await self.tasks.get_task(task_id)

    async def retry_failed(
        self,
        *,
        app_id: str,
        app_config_type: AppConfigType | None,
        created_after: datetime | None,
        created_before: datetime | None,
        errors_only: bool,
        batch_size: int,
        limit: int,
    ) -> tuple[int, int]:
        """Retry every FAILED task matching the filters, `batch_size` at a time."""
        if not 0 <= batch_size <= 1000:
            raise InvalidArgument("batch_size", f"between 1 and 1000, got {batch_size}")
        if not 0 <= limit <= MAX_RETRY_ALL:
            raise InvalidArgument("limit", f"between 1 and {MAX_RETRY_ALL}, got {limit}")
        batch_size = batch_size or 500
        limit = limit or MAX_RETRY_ALL
        app_id = validation.validate_app_id(app_id)
        after, before = validation.validate_time_window(created_after, created_before)
        retried = batches = 0
        while retried < limit:
            ids = await self.ops.failed_ids(
                app_id=app_id,
                app_config_type=app_config_type,
                created_after=after,
                created_before=before,
                errors_only=errors_only,
                limit=min(batch_size, limit - retried),
            )
            if not ids:
                break
            done = await self.ops.retry(ids, "retried by an operator (all failed)", self.clock())
            for task_id in done:
                self.dispatcher.submit(task_id)
            retried += len(done)
            batches += 1
            if not done:
                break  # every candidate changed meanwhile
        log.info("tasks.retried_failed", retried=retried, batches=batches)
        return retried, batches

    async def dead_letters(
        self, app_id: str, page_size: int, token: str
    ) -> tuple[list[tuple[Task, list[AttemptError]]], str]:
        app_id = validation.validate_app_id(app_id)
        size = validation.validate_page_size(page_size)
        # The token is bound to the filter (failed, this app) like ListTasks' tokens.
        list_filter = ListFilter(status=TaskStatus.FAILED, app_id=app_id)
        after = decode_page_token(token, list_filter)
        found, events = await self.ops.dead_letters(app_id, after, size + 1)
        page = found[:size]
        next_token = ""
        if len(found) > size:
            last = page[-1]
            next_token = encode_page_token(Cursor(last.created_at, last.id), list_filter)
        return [(task, attempt_errors(events[task.id])) for task in page], next_token

    async def run_retention(self) -> dict[str, int]:
        """One retention pass (skipped, empty, while another replica runs one)."""
        removed: dict[str, int] = {}
        async with self.locks.exclusive(RETENTION_LOCK_KEY) as lease:
            if not lease.acquired:
                return removed
            for rule in self.policy.active():
                while True:
                    now = self.clock()
                    victims = await self.ops.expired(rule, now, self.policy.batch_size)
                    count = await self.ops.remove(await self._without_reports(victims), now)
                    if count:
                        removed[rule.status.value] = removed.get(rule.status.value, 0) + count
                    if len(victims) < self.policy.batch_size or not count:
                        break
        if removed:
            log.info("retention.removed", **removed)
        return removed

    async def _without_reports(self, victims: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Delete the victims' reports; the victims whose reports are gone."""
        if self.delete_reports is None or not victims:
            return victims
        gone = await self.delete_reports([str(victim["id"]) for victim in victims])
        kept = [str(v["id"]) for v in victims if str(v["id"]) not in gone]
        if kept:
            log.warning("retention.kept_for_reports", tasks=kept)
        reports = sum(gone.values())
        if reports:
            log.info("retention.reports_deleted", reports=reports, tasks=len(gone))
        return [victim for victim in victims if str(victim["id"]) in gone]

    async def run(self) -> None:
        while True:
            try:
                await self.run_retention()
            except Exception:
                log.exception("retention.failed")
            await asyncio.sleep(self.interval_seconds)
