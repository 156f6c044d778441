"""The job runner both modes share: admit a delivered job (the duplicate guard),
run it through the handler, settle its result on the backend, and keep the
worker's record (jobs in hand, processed) up to date."""

from __future__ import annotations

import uuid

import structlog

from shared.context import bind_request_id, bind_task_id
from shared.log import get_logger

from .backend import Delivery, QueueBackend
from .model import Admission, JobResult, Outcome, WorkerRecord
from .pipeline import JobHandler

log = get_logger(__name__)


class JobRunner:
    def __init__(
        self,
        backend: QueueBackend,
        handler: JobHandler,
        record: WorkerRecord,
        *,
        busy_retry_seconds: float,
    ) -> None:
        self.backend = backend
        self.handler = handler
        self.record = record
        self.busy_retry_seconds = busy_retry_seconds

    async def run(self, delivery: Delivery) -> JobResult:
        """Run one delivery in the current asyncio task (its log context is the job's)."""
        job = delivery.job
        bind_task_id(job.task_id)
        if job.request_id:
            # The worker's calls carry the id of the request that created the task.
            bind_request_id(job.request_id)
        structlog.contextvars.bind_contextvars(job_id=job.job_id, worker_id=self.record.id)
        # The duplicate guard's lock belongs to this run, not to the worker: a
        # worker may be handed two deliveries of one task.
        holder = f"{self.record.id}/{uuid.uuid4().hex[:12]}"
        admission = await self.backend.admit(delivery, holder)
        if admission is Admission.STALE:
            log.info("job.stale_delivery_dropped")
            result = JobResult(Outcome.SKIPPED, "stale delivery")
            await self.backend.settle(delivery, result, holder)
            return result
        if admission is Admission.BUSY:
            # Another worker runs this task now; look again later rather than
            # drop it (if that worker dies, this delivery is the one left).
            log.info("job.busy_elsewhere", retry_in=self.busy_retry_seconds)
            result = JobResult(
                Outcome.RETRY,
                "task held by another worker",
                delay_seconds=self.busy_retry_seconds,
                same_attempt=True,
            )
            await self.backend.settle(delivery, result, holder)
            return result
        self.record.jobs_in_hand.add(job.task_id)
        try:
            result = await self.handler.process(job)
        finally:
            self.record.jobs_in_hand.discard(job.task_id)
        self.record.processed += 1
        await self.backend.settle(delivery, result, holder)
        return result
