"""The worker both modes share: it takes up to its free slots of jobs at once,
admits them (the duplicate guard), runs them through the handler as one batch
and settles their results on the backend. Beside it run its background jobs:
the heartbeat (registry record, keep-alive of the jobs in hand), the pause
watch, the backend's maintenance, and the gates' health watches.

A worker takes nothing while the queue is paused or a gate is closed (the
tasks or verification service not SERVING); its record says why, so
ListWorkers and the queue status show it. On Redis it runs in its own process
(`services.queue.worker`), in the embedded mode inside the queue service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import structlog

from shared.context import bind_request_id
from shared.log import get_logger
from shared.retry import Backoff, Outage, keep_running

from . import policy
from .backend import Delivery, QueueBackend, Settlement
from .errors import QueueUnavailable
from .model import Admission, Job, JobResult, Outcome, WorkerRecord

log = get_logger(__name__)

# How long one read waits for the first job (a stop is seen within this).
TAKE_BLOCK_SECONDS = 0.5
MAINTENANCE_TICK_SECONDS = 0.25
# A backend fault in the take loop: back off up to this.
TAKE_BACKOFF = Backoff(base_seconds=0.1, cap_seconds=2.0)
# A lost health watch is watched again soon: the gate stays closed meanwhile.
GATE_BACKOFF = Backoff(base_seconds=0.2, cap_seconds=2.0)
# The stop after the jobs in hand, each step bounded: a Redis that does not
# answer must not keep a stopping worker alive (one redis-py call retries its
# connect, health check and command with a 10 s socket timeout each: minutes).
# Whatever is left undone is undone by the idle timeout and the record's expiry.
STOP_BACKGROUND_SECONDS = 5.0
LEAVE_TIMEOUT_SECONDS = 5.0


class BatchHandler(Protocol):
    """Runs a batch of jobs and says what became of each, in order; never
    raises for RPC faults (a fault is a job's result)."""

    async def process_batch(self, jobs: Sequence[Job]) -> list[JobResult]: ...


class Gate(Protocol):
    """A condition for taking jobs (a dependency's health)."""

    @property
    def reason(self) -> str:
        """Why jobs may not be taken now; "" when they may."""

    async def watch(self) -> None:
        """Follow the condition (a background job; ends only by raising)."""


class BatchWorker:
    def __init__(
        self,
        backend: QueueBackend,
        *,
        concurrency: int,
        heartbeat_seconds: float,
        busy_base_seconds: float,
        shutdown_grace_seconds: float,
        record: WorkerRecord | None = None,
    ) -> None:
        self.backend = backend
        self.record = record or WorkerRecord.create(concurrency, started_at=time.time())
        self.concurrency = concurrency
        self.heartbeat_seconds = heartbeat_seconds
        self.busy_base_seconds = busy_base_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.paused = False
        # No job is taken before the pause watch has read the flag once.
        self._pause_known = False
        # Set once the worker knows whether the queue is paused (tests wait for it).
        self.ready = asyncio.Event()
        self._gates: Sequence[Gate] = ()
        self._free = concurrency
        self._batches: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def idle_reason(self) -> str:
        """Why the worker takes no jobs now ("" while it does)."""
        reasons = [gate.reason for gate in self._gates if gate.reason]
        if self.paused:
            reasons.insert(0, "queue paused")
        elif not self._pause_known:
            reasons.insert(0, "reading the pause flag")
        return "; ".join(reasons)

    async def run(
        self, handler: BatchHandler, stop: asyncio.Event, gates: Sequence[Gate] = ()
    ) -> None:
        """Work until `stop` is set, then finish the jobs in hand and leave cleanly."""
        self._gates = gates
        if not await self._start(stop):
            return
        background = [
            asyncio.create_task(job)
            for job in (
                keep_running("worker heartbeat", self._heartbeat, every=self.heartbeat_seconds),
                keep_running("pause watch", lambda: self.backend.watch_pause(self._on_pause)),
                keep_running(
                    "queue maintenance", self.backend.maintain, every=MAINTENANCE_TICK_SECONDS
                ),
                *(
                    keep_running(f"health watch {n}", gate.watch, backoff=GATE_BACKOFF)
                    for n, gate in enumerate(gates)
                ),
                self._wake_on(stop),
            )
        ]
        log.info(
            "worker.started",
            worker_id=self.id,
            queue=self.backend.queue_name,
            mode=self.backend.kind,
            concurrency=self.concurrency,
        )
        try:
            await self._take_loop(handler, stop)
        finally:
            # Every step is bounded, and a cancellation of `run` meanwhile is not
            # swallowed (it ends the stop early): asyncio.wait_for(run, t) on
            # Python 3.11 waits for the cancelled task to finish, however long.
            await self._finish_batches()
            await self._stop_background(background)
            await self._leave()

    async def _start(self, stop: asyncio.Event) -> bool:
        """Start when the backend answers (a worker started before Redis waits for it)."""
        outage = Outage("queue backend", event="worker.start")
        while not stop.is_set():
            try:
                await self.backend.start()
                await self._heartbeat()
                outage.succeeded()
                return True
            except (QueueUnavailable, OSError) as exc:
                failures = outage.failed(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TAKE_BACKOFF.delay(failures))
        return False

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._changed.set()

    def _on_pause(self, paused: bool) -> None:
        if not self._pause_known:
            self._pause_known = True
            self._changed.set()
            self.ready.set()
        if paused != self.paused:
            log.info("worker.paused" if paused else "worker.resumed", worker_id=self.id)
            self.paused = paused
            self._changed.set()

    async def _heartbeat(self) -> None:
        self.record.idle_reason = self.idle_reason
        await self.backend.heartbeat(self.record)

    async def _take_loop(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        outage = Outage("queue read", event="worker.take")
        while not stop.is_set():
            self._changed.clear()
            if self.idle_reason or self._free <= 0:
                # Re-check at least every read period: a gate has no event of its own.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), TAKE_BLOCK_SECONDS)
                continue
            try:
                deliveries = await self.backend.take(self._free, TAKE_BLOCK_SECONDS)
                outage.succeeded()
            except (QueueUnavailable, OSError) as exc:
                failures = outage.failed(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TAKE_BACKOFF.delay(failures))
                continue
            if not deliveries:
                continue
            if self.idle_reason or stop.is_set():
                # Paused (or a dependency went down) while the read was out.
                await self._give_back(deliveries)
                continue
            self._free -= len(deliveries)
            batch = asyncio.create_task(self._run_batch(handler, deliveries))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    async def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        try:
            await self.backend.give_back(deliveries)
        except (QueueUnavailable, OSError) as exc:
            # They stay pending and are reclaimed after the idle timeout.
            log.warning("worker.give_back_failed", error=str(exc), jobs=len(deliveries))

    async def _run_batch(self, handler: BatchHandler, deliveries: Sequence[Delivery]) -> None:
        try:
            await self._run_admitted(handler, deliveries)
        finally:
            self._free += len(deliveries)
            self._changed.set()

    async def _run_admitted(self, handler: BatchHandler, deliveries: Sequence[Delivery]) -> None:
        # The worker's calls carry the id of a request that created one of the
        # tasks (each job's own id is on its log lines).
        first_request = next((d.job.request_id for d in deliveries if d.job.request_id), "")
        if first_request:
            bind_request_id(first_request)
        structlog.contextvars.bind_contextvars(worker_id=self.id)
        # The duplicate guard's lock belongs to a run, not to the worker: a
        # worker may be handed two deliveries of one task.
        holders = [f"{self.id}/{uuid.uuid4().hex[:12]}" for _ in deliveries]
        try:
            admissions = await self.backend.admit_many(deliveries, holders)
        except (QueueUnavailable, OSError) as exc:
            # Nothing ran: the entries stay pending and come back after the idle timeout.
            log.warning("worker.admit_failed", error=str(exc), jobs=len(deliveries))
            return
        settlements: list[Settlement] = []
        to_run: list[tuple[Delivery, str]] = []
        for delivery, holder, admission in zip(deliveries, holders, admissions, strict=True):
            job = delivery.job
            if admission is Admission.STALE:
                log.info("job.stale_delivery_dropped", task_id=job.task_id, job_id=job.job_id)
                settlements.append(
                    Settlement(delivery, JobResult(Outcome.SKIPPED, "stale delivery"), holder)
                )
            elif admission is Admission.BUSY:
                delay = policy.busy_delay(self.busy_base_seconds)
                log.info("job.busy_elsewhere", task_id=job.task_id, retry_in=round(delay, 3))
                busy = JobResult(
                    Outcome.RETRY,
                    "task held by another worker",
                    delay_seconds=delay,
                    same_attempt=True,
                )
                settlements.append(Settlement(delivery, busy, holder))
            else:
                to_run.append((delivery, holder))
        if to_run:
            settlements.extend(await self._run_jobs(handler, to_run))
        try:
            await self.backend.settle_many(settlements)
        except (QueueUnavailable, OSError) as exc:
            # Not acknowledged: the entries stay pending and are reclaimed after
            # the idle timeout (the attempt fencing makes a rerun harmless).
            log.warning("batch.settle_failed", error=str(exc), jobs=len(settlements))

    async def _run_jobs(
        self, handler: BatchHandler, to_run: Sequence[tuple[Delivery, str]]
    ) -> list[Settlement]:
        jobs = [delivery.job for delivery, _ in to_run]
        in_hand = self.record.jobs_in_hand
        in_hand.update(job.task_id for job in jobs)
        try:
            results = await handler.process_batch(jobs)
        except Exception:
            # The handler turns every fault into a result; reaching here is a
            # bug. Put the jobs back (not counted as a run) so no task is lost.
            log.exception("batch.handler_crashed", jobs=len(jobs))
            crashed = JobResult(
                Outcome.RETRY,
                "worker error",
                delay_seconds=self.busy_base_seconds,
                same_attempt=True,
            )
            results = [crashed] * len(jobs)
        finally:
            in_hand.difference_update(job.task_id for job in jobs)
        self.record.processed += len(jobs)
        return [
            Settlement(delivery, result, holder)
            for (delivery, holder), result in zip(to_run, results, strict=True)
        ]

    async def _finish_batches(self) -> None:
        """Let the batches in hand finish within the shutdown grace, cancel the rest
        (their entries stay pending and are reclaimed)."""
        if self._batches:
            await asyncio.wait(set(self._batches), timeout=self.shutdown_grace_seconds)
        for task in list(self._batches):
            task.cancel()

    async def _stop_background(self, background: Sequence[asyncio.Task[None]]) -> None:
        for task in background:
            task.cancel()
        _, stuck = await asyncio.wait(background, timeout=STOP_BACKGROUND_SECONDS)
        if stuck:
            # Cancelled and still in a call (its finally): left to end on its own.
            log.warning("worker.background_not_stopped", jobs=len(stuck))

    async def _leave(self) -> None:
        """Return whatever this worker still holds and drop its registry record."""
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_SECONDS):
                returned = await self.backend.leave(self.record)
            if returned:
                log.info("worker.returned_jobs", count=returned)
        except Exception as exc:
            # TimeoutError included: the entries stay pending and are reclaimed
            # after the idle timeout; the record expires (worker_forget_after).
            log.warning("worker.leave_failed", error=str(exc) or type(exc).__name__)
        log.info("worker.stopped", worker_id=self.id, processed=self.record.processed)
