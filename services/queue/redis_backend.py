"""The queue on Redis: a stream read by a consumer group (through taskiq), a
delayed set for retries, a paused flag with a pub/sub channel, counters and a
worker registry. Every count is O(1) or O(groups): no scans.

Keys (see broker.QueueKeys), for queue NAME under verifier:queue:{NAME}:
  stream       the jobs (taskiq JSON messages), group "verifier-workers"
  delayed      ZSET of retry messages by due time (ms, Redis clock)
  paused       present while the queue is paused; `control` is its channel
  epoch        present since the queue service last saw the data whole: a
               flush or a restart without persistence removes it, which tells
               the service to enqueue every unfinished task again
  completed    / failed: counters of finished jobs
  job:<task>   the task's current job id (EnqueueTask's idempotency)
  lock:<task>  the worker running the task (the duplicate guard)
  workers      ZSET worker id -> last heartbeat; worker:<id> its record (JSON)
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

from redis.exceptions import RedisError, ResponseError

from shared.context import current_request_id
from shared.log import get_logger

from . import policy
from .backend import Delivery, QueueBackend, Settlement
from .broker import (
    GROUP,
    JOB_KEY_TTL_SECONDS,
    VerifierStreamBroker,
    decode_job,
    encode_job,
    text,
)
from .errors import QueueUnavailable
from .model import (
    Admission,
    EnqueueResult,
    Job,
    Outcome,
    QueueStatusView,
    WorkerInfo,
    WorkerRecord,
    new_job_id,
    worker_info_from_json,
)
from .settings import QueueSettings

log = get_logger(__name__)

MOVE_DUE_BATCH = 500
PAUSE_REREAD_SECONDS = 1.0
TRIM_EVERY_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 60.0


@contextlib.asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    """Redis faults become QueueUnavailable (UNAVAILABLE: the caller may retry)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"the queue's Redis is unavailable: {exc}") from exc


def _stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisQueue(QueueBackend):
    """QueueBackend on Redis, used by the queue service and by every worker."""

    kind: ClassVar[str] = "redis"
    probe_name: ClassVar[str] = "redis"
    in_process_workers: ClassVar[bool] = False

    def __init__(self, settings: QueueSettings, *, consumer_name: str | None = None) -> None:
        self.settings = settings
        self.broker = VerifierStreamBroker(
            settings.redis_url,
            settings.queue_name,
            consumer_name=consumer_name,
            concurrency=settings.queue_concurrency,
            idle_timeout_seconds=settings.job_idle_timeout_seconds,
            maxlen=settings.queue_max_length,
        )
        self.keys = self.broker.keys
        self.redis = self.broker.redis
        self.lock_ttl_ms = int(settings.job_idle_timeout_seconds * 1000)
        self._last_trim = 0.0
        self._last_prune = 0.0

    @property
    def queue_name(self) -> str:
        return self.settings.queue_name

    async def start(self) -> None:
        async with _redis_errors():
            await self.broker.declare_group()

    async def close(self) -> None:
        await self.broker.shutdown()

    async def probe(self) -> str:
        info = await self.redis.info("server")
        return str(info.get("redis_version", ""))

    # --- service side -----------------------------------------------------------

    async def enqueue_many(self, task_ids: Sequence[str]) -> list[EnqueueResult]:
        request_id = current_request_id()
        async with _redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            # The consumer group exists before the first XADD (start() creates
            # it), and it is created at "0", so even a stream deleted and
            # recreated under us is read from its first entry.
            for task_id in task_ids:
                job = Job(new_job_id(), task_id, request_id=request_id)
                await self.broker.enqueue_script(
                    keys=[self.keys.job(task_id), self.keys.stream],
                    args=[
                        job.job_id,
                        encode_job(job),
                        self.settings.queue_max_length,
                        JOB_KEY_TTL_SECONDS,
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        results: list[EnqueueResult] = []
        for reply in replies:
            code, job_id = int(reply[0]), text(reply[1])
            results.append(EnqueueResult(job_id, already_enqueued=code == 0, full=code == -1))
        return results

    async def status(self) -> QueueStatusView:
        now = time.time()
        offline_after = self.settings.worker_offline_after_seconds
        async with _redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.paused)
            pipe.xinfo_groups(self.keys.stream)
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            pipe.mget(self.keys.completed, self.keys.failed)
            pipe.zcount(self.keys.workers, now - offline_after, "+inf")
            replies = await pipe.execute(raise_on_error=False)
        paused, groups, length, delayed, counters, online = replies
        workers = await self.list_workers()
        waiting, active = 0, 0
        if isinstance(groups, list):
            for group in groups:
                if text(group.get("name")) != GROUP:
                    continue
                active = int(group.get("pending") or 0)
                lag = group.get("lag")
                # lag is unknown when entries were deleted mid-stream; then the
                # stream's length minus what is in hand is the closest bound.
                waiting = int(lag) if lag is not None else max(0, int(length or 0) - active)
        elif isinstance(groups, ResponseError):
            # No stream yet (nothing was ever enqueued): every count is zero.
            pass
        return QueueStatusView(
            queue_name=self.queue_name,
            paused=bool(paused) if not isinstance(paused, Exception) else False,
            waiting=waiting,
            active=active,
            delayed=int(delayed) if isinstance(delayed, int) else 0,
            completed=int(counters[0] or 0) if isinstance(counters, list) else 0,
            failed=int(counters[1] or 0) if isinstance(counters, list) else 0,
            workers_online=int(online) if isinstance(online, int) else 0,
            concurrency=self.settings.queue_concurrency,
            backend=self.kind,
            idle_reasons=policy.idle_reasons(workers),
        )

    async def set_paused(self, paused: bool) -> None:
        async with _redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            if paused:
                pipe.set(self.keys.paused, "1")
            else:
                pipe.delete(self.keys.paused)
            pipe.publish(self.keys.control, "paused" if paused else "resumed")
            await pipe.execute()

    async def claim_epoch(self) -> bool:
        async with _redis_errors():
            created = await self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
        return bool(created)

    async def drop_epoch(self) -> None:
        async with _redis_errors():
            await self.redis.delete(self.keys.epoch)

    async def list_workers(self) -> list[WorkerInfo]:
        now = time.time()
        async with _redis_errors():
            entries: list[Any] = await self.redis.zrange(self.keys.workers, 0, -1, withscores=True)
            if not entries:
                return []
            ids = [text(member) for member, _ in entries]
            records: list[Any] = await self.redis.mget(
                [self.keys.worker(worker_id) for worker_id in ids]
            )
        workers: list[WorkerInfo] = []
        for (_, last_seen), record in zip(entries, records, strict=True):
            if record is None:
                continue  # forgotten (expired); pruned from the set by maintenance
            state = policy.worker_state(
                float(last_seen), now, self.settings.worker_offline_after_seconds
            )
            try:
                workers.append(worker_info_from_json(record, state))
            except (ValueError, KeyError, TypeError):
                log.warning("queue.bad_worker_record", record=text(record)[:200])
        return policy.sort_workers(workers)

    # --- worker side ------------------------------------------------------------

    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        async with _redis_errors():
            entries = await self.broker.fetch(count, int(block_seconds * 1000))
        deliveries: list[Delivery] = []
        unreadable: list[str] = []
        for entry_id, data, deliveries_count in entries:
            try:
                job = decode_job(data)
            except (ValueError, KeyError, TypeError):
                unreadable.append(entry_id)
                continue
            deliveries.append(
                Delivery(
                    Job(
                        job.job_id,
                        job.task_id,
                        job.attempt,
                        job.request_id,
                        deliveries_count,
                        job.first_fault_at,
                    ),
                    entry_id,
                )
            )
        if unreadable:
            # Not a job of ours: acknowledged, or it would come back forever.
            log.warning("queue.dropped_unreadable_message", entries=unreadable)
            self.broker.settled(unreadable)
            async with _redis_errors():
                await self.redis.xack(self.keys.stream, GROUP, *unreadable)
        return deliveries

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        await self.broker.give_back([delivery.ref for delivery in deliveries])

    async def admit_many(
        self, deliveries: Sequence[Delivery], holders: Sequence[str]
    ) -> list[Admission]:
        async with _redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for delivery, holder in zip(deliveries, holders, strict=True):
                task_id = delivery.job.task_id
                await self.broker.admit_script(
                    keys=[self.keys.job(task_id), self.keys.lock(task_id)],
                    args=[delivery.job.job_id, holder, self.lock_ttl_ms],
                    client=pipe,
                )
            verdicts = await pipe.execute()
        return [Admission(text(verdict)) for verdict in verdicts]

    async def settle_many(self, settlements: Sequence[Settlement]) -> None:
        async with _redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for item in settlements:
                job, result = item.delivery.job, item.result
                retry_payload = b""
                delay_ms = 0
                if result.outcome is Outcome.RETRY:
                    retry_payload = encode_job(job.retried(result))
                    delay_ms = int(result.delay_seconds * 1000)
                await self.broker.settle_script(
                    keys=[
                        self.keys.stream,
                        self.keys.job(job.task_id),
                        self.keys.lock(job.task_id),
                        self.keys.delayed,
                        self.keys.completed,
                        self.keys.failed,
                    ],
                    args=[
                        GROUP,
                        item.delivery.ref,
                        job.job_id,
                        item.holder,
                        result.outcome.value,
                        retry_payload,
                        delay_ms,
                        JOB_KEY_TTL_SECONDS,
                    ],
                    client=pipe,
                )
            await pipe.execute()
        self.broker.settled([item.delivery.ref for item in settlements])

    async def heartbeat(self, record: WorkerRecord) -> None:
        """Publish the worker's record and keep its jobs in hand claimed."""
        now = time.time()
        forget_after = max(
            int(self.settings.worker_forget_after_seconds),
            int(self.settings.worker_offline_after_seconds) + 1,
        )
        async with _redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.worker(record.id), record.to_json(now), ex=forget_after)
                pipe.zadd(self.keys.workers, {record.id: now})
                await pipe.execute()
            await self.broker.keep_alive(
                [self.keys.lock(task_id) for task_id in record.jobs_in_hand], self.lock_ttl_ms
            )

    async def leave(self, record: WorkerRecord) -> int:
        async with _redis_errors():
            returned = await self.broker.release_consumer()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.worker(record.id))
                pipe.zrem(self.keys.workers, record.id)
                await pipe.execute()
        return returned

    async def read_paused(self) -> bool:
        async with _redis_errors():
            return bool(await self.redis.exists(self.keys.paused))

    async def watch_pause(self, on_change: Callable[[bool], None]) -> None:
        """Follow the paused flag: pub/sub for an instant reaction, and a re-read
        at least every second (a lost message or a reconnect cannot hide it).
        Ends only by raising; the worker's keep_running subscribes again."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.control)
            while True:
                on_change(await self.read_paused())
                await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=PAUSE_REREAD_SECONDS
                )
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # --- maintenance (run by the service and by every worker) -------------------

    async def move_due(self) -> int:
        """Move delayed jobs whose time has come back to the stream."""
        moved = await self.broker.move_due_script(
            keys=[self.keys.delayed, self.keys.stream],
            args=[MOVE_DUE_BATCH, self.settings.queue_max_length],
        )
        return int(moved)

    async def trim(self) -> None:
        """Trim the stream below the oldest entry still needed: the oldest in hand
        (pending) or the oldest not yet read. MAXLEN alone could drop jobs
        nobody has read; MINID computed this way cannot."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(self.keys.stream)
            pipe.xpending(self.keys.stream, GROUP)
            groups, pending = await pipe.execute(raise_on_error=False)
        if not isinstance(groups, list) or not groups:
            return
        floor: tuple[int, int] | None = None
        for group in groups:
            last = _stream_id_key(text(group.get("last-delivered-id") or "0-0"))
            floor = last if floor is None else min(floor, last)
        if isinstance(pending, dict) and pending.get("pending") and pending.get("min"):
            floor = min(floor or (0, 0), _stream_id_key(text(pending["min"])))
        if floor is None or floor == (0, 0):
            return
        await self.redis.xtrim(self.keys.stream, minid=f"{floor[0]}-{floor[1]}", approximate=True)

    async def prune(self) -> None:
        """Forget workers not heard from for worker_forget_after_seconds and
        delete their idle consumers (their jobs were reclaimed already)."""
        cutoff = time.time() - self.settings.worker_forget_after_seconds
        await self.redis.zremrangebyscore(self.keys.workers, "-inf", cutoff)
        try:
            consumers = await self.redis.xinfo_consumers(self.keys.stream, GROUP)
        except ResponseError:
            return
        idle_limit_ms = self.settings.worker_forget_after_seconds * 1000
        for consumer in consumers:
            if int(consumer.get("pending") or 0) == 0 and int(consumer.get("idle") or 0) > (
                idle_limit_ms
            ):
                await self.redis.xgroup_delconsumer(
                    self.keys.stream, GROUP, text(consumer.get("name"))
                )

    async def maintain(self) -> None:
        """One tick: due retries now, trim and prune now and then."""
        async with _redis_errors():
            await self.move_due()
            now = time.monotonic()
            if now - self._last_trim >= TRIM_EVERY_SECONDS:
                self._last_trim = now
                await self.trim()
            if now - self._last_prune >= PRUNE_EVERY_SECONDS:
                self._last_prune = now
                await self.prune()
