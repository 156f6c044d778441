"""A worker on Redis: taskiq's Receiver runs QUEUE_CONCURRENCY jobs at once from
the VerifierStreamBroker and acknowledges each when it has been executed; beside
it run the heartbeat (registry record + keep-alive of the jobs in hand), the
pause watcher and the maintenance loop (due retries, trim, prune).

Used by `services.queue.worker` (the worker process) and by tests in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from taskiq import Context, TaskiqDepends
from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from shared.config import Settings
from shared.log import get_logger

from .backend import Delivery
from .broker import DELIVERIES_LABEL, REQUEST_ID_LABEL, STREAM_ID_LABEL, TASK_NAME
from .errors import QueueUnavailable
from .model import Job, WorkerRecord
from .pipeline import JobHandler
from .redis_backend import RedisQueue
from .runner import JobRunner

log = get_logger(__name__)

STARTUP_RETRY_SECONDS = 1.0
# taskiq injects the message context into the task function through this default.
_MESSAGE_CONTEXT: Any = TaskiqDepends()


class RedisWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.record = WorkerRecord.create(settings.queue_concurrency, started_at=time.time())
        self.queue = RedisQueue(settings, consumer_name=self.record.id)
        self.broker = self.queue.broker
        # Set once the worker reads the stream (tests wait for it).
        self.ready = asyncio.Event()
        # taskiq logs every execution at INFO; the job log lines carry more.
        logging.getLogger("taskiq").setLevel(logging.WARNING)

    @property
    def id(self) -> str:
        return self.record.id

    async def run(self, handler: JobHandler, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish the jobs in hand and leave cleanly."""
        runner = JobRunner(
            self.queue,
            handler,
            self.record,
            busy_retry_seconds=self.settings.retry_base_seconds,
        )
        self._register_task(runner)
        if not await self._wait_for_redis(stop):
            await self.queue.close()
            return
        background = [
            asyncio.create_task(self._loop(self._heartbeat_loop)),
            asyncio.create_task(self._loop(lambda: self.queue.watch_pause(self._on_pause))),
            asyncio.create_task(self._loop(self.queue.maintain)),
        ]
        receiver = Receiver(
            self.broker,
            max_async_tasks=self.settings.queue_concurrency,
            max_prefetch=0,
            ack_type=AcknowledgeType.WHEN_EXECUTED,
            run_startup=False,
            wait_tasks_timeout=self.settings.shutdown_grace_seconds,
        )
        self.ready.set()
        log.info(
            "worker.started",
            worker_id=self.id,
            queue=self.settings.queue_name,
            concurrency=self.settings.queue_concurrency,
            paused=self.broker.paused,
        )
        try:
            await receiver.listen(stop)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._leave()

    def _register_task(self, runner: JobRunner) -> None:
        broker = self.broker

        async def verify_task(
            task_id: str, attempt: int = 1, context: Context = _MESSAGE_CONTEXT
        ) -> None:
            entry_id = str(context.message.labels.get(STREAM_ID_LABEL, ""))
            broker.started.add(entry_id)
            request_id = str(context.message.labels.get(REQUEST_ID_LABEL, ""))
            deliveries = int(context.message.labels.get(DELIVERIES_LABEL, 1))
            job = Job(context.message.task_id, task_id, int(attempt), request_id, deliveries)
            delivery = Delivery(job, entry_id)
            try:
                await runner.run(delivery)
            except (RedisError, OSError, QueueUnavailable) as exc:
                # Not acknowledged: the entry stays pending and is reclaimed
                # after the idle timeout (the lifecycle makes a rerun harmless).
                log.warning("job.settle_failed", error=str(exc))
            finally:
                broker.in_hand.pop(entry_id, None)

        broker.register_task(verify_task, task_name=TASK_NAME)

    async def _wait_for_redis(self, stop: asyncio.Event) -> bool:
        """Start when Redis answers (a worker started before Redis waits for it)."""
        while not stop.is_set():
            try:
                await self.queue.start()
                self.broker.set_paused(await self.queue.read_paused())
                await self.queue.heartbeat(self.record)
                return True
            except (RedisError, OSError, QueueUnavailable) as exc:
                log.warning("worker.redis_unavailable", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STARTUP_RETRY_SECONDS)
        return False

    def _on_pause(self, paused: bool) -> None:
        if paused != self.broker.paused:
            log.info("worker.paused" if paused else "worker.resumed", worker_id=self.id)
        self.broker.set_paused(paused)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.queue.heartbeat(self.record)
            await asyncio.sleep(self.settings.worker_heartbeat_seconds)

    @staticmethod
    async def _loop(body: Callable[[], Awaitable[None]]) -> None:
        """Keep a background loop alive across Redis outages."""
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "worker.loop_failed", error=str(exc), loop=getattr(body, "__name__", "")
                )
                await asyncio.sleep(1.0)

    async def _leave(self) -> None:
        """Return whatever this consumer still holds, drop the registry record, close."""
        try:
            returned = await self.broker.release_consumer()
            if returned:
                log.info("worker.returned_jobs", count=returned)
            await self.queue.unregister(self.record)
        except (RedisError, OSError) as exc:
            log.warning("worker.leave_failed", error=str(exc))
        finally:
            await self.queue.close()
        log.info("worker.stopped", worker_id=self.id, processed=self.record.processed)
