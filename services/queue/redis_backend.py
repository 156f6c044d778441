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
    JobPage,
    JobState,
    JobView,
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

# DiscardJob: a job still waiting (its entry not yet read by the group, and not
# in hand) is deleted from the stream, and the task's job key with it when it
# is this job's. Entry ids compare as (ms, seq).
DISCARD_LUA = """
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local last = '0-0'
for _, group in ipairs(groups) do
  local name, delivered = nil, nil
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local ems, eseq = parts(ARGV[2])
local lms, lseq = parts(last)
if ems < lms or (ems == lms and eseq <= lseq) then return 0 end
if redis.call('XDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

# PromoteJob: a delayed retry goes to the stream now (as MOVE_DUE_LUA does when
# it is due); 0 when it already left the delayed set.
PROMOTE_LUA = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[2]), '*', 'data', ARGV[1])
return 1
"""
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


def _entry_seconds(entry_id: str) -> float:
    """When a stream entry was added (its id's milliseconds, Redis's clock)."""
    return _stream_id_key(entry_id)[0] / 1000


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
        self.discard_script = self.redis.register_script(DISCARD_LUA)
        self.promote_script = self.redis.register_script(PROMOTE_LUA)
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

    # --- job actions (operators) ---------------------------------------------------
    # Cursors: the last stream entry id listed (waiting, active); the offset in
    # the delayed set, in due order (delayed).

    async def list_jobs(self, state: JobState, after: str, limit: int) -> JobPage:
        async with _redis_errors():
            if state is JobState.WAITING:
                return await self._list_waiting(after, limit)
            if state is JobState.ACTIVE:
                return await self._list_active(after, limit)
            if state is JobState.DELAYED:
                return await self._list_delayed(int(after or 0), limit)
        raise ValueError(f"the Redis queue holds no {state.value} jobs")

    async def _last_delivered(self) -> str | None:
        """The group's last-delivered id; None when there is no stream yet."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.keys.stream)
        except ResponseError:
            return None
        for group in groups:
            if text(group.get("name")) == GROUP:
                return text(group.get("last-delivered-id") or "0-0")
        return "0-0"

    async def _list_waiting(self, after: str, limit: int) -> JobPage:
        last = await self._last_delivered()
        if last is None:
            return JobPage([])
        start = max(last, after, key=_stream_id_key) if after else last
        entries: Any = await self.redis.xrange(self.keys.stream, f"({start}", "+", count=limit + 1)
        views = [
            JobView(job, JobState.WAITING, queued_at=_entry_seconds(entry_id), ref=entry_id)
            for entry_id, job in self._decoded(entries)
        ]
        page = views[:limit]
        return JobPage(page, str(page[-1].ref) if len(views) > limit else "")

    async def _list_active(self, after: str, limit: int) -> JobPage:
        try:
            pending: Any = await self.redis.xpending_range(
                self.keys.stream, GROUP, f"({after}" if after else "-", "+", limit + 1
            )
        except ResponseError:
            return JobPage([])  # no stream or group yet
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in pending[:limit]:
                entry_id = text(item["message_id"])
                pipe.xrange(self.keys.stream, entry_id, entry_id)
            bodies = await pipe.execute()
        views: list[JobView] = []
        for item, body in zip(pending[:limit], bodies, strict=True):
            for entry_id, job in self._decoded(body):
                views.append(
                    JobView(
                        job,
                        JobState.ACTIVE,
                        queued_at=_entry_seconds(entry_id),
                        worker=text(item["consumer"]),
                        deliveries=int(item["times_delivered"]),
                        ref=entry_id,
                    )
                )
        last = text(pending[limit - 1]["message_id"]) if len(pending) > limit else ""
        return JobPage(views, last)

    async def _list_delayed(self, offset: int, limit: int) -> JobPage:
        members: Any = await self.redis.zrange(
            self.keys.delayed, offset, offset + limit, withscores=True
        )
        views: list[JobView] = []
        for member, score in members[:limit]:
            try:
                job = decode_job(member)
            except (ValueError, KeyError, TypeError):
                continue
            views.append(JobView(job, JobState.DELAYED, run_at=float(score) / 1000, ref=member))
        return JobPage(views, str(offset + limit) if len(members) > limit else "")

    @staticmethod
    def _decoded(entries: Any) -> list[tuple[str, Job]]:
        out: list[tuple[str, Job]] = []
        for entry_id, fields in entries or ():
            data = (fields or {}).get(b"data")
            if data is None:
                continue
            try:
                out.append((text(entry_id), decode_job(data)))
            except (ValueError, KeyError, TypeError):
                continue  # not a job of ours (the worker drops it)
        return out

    async def current_job_id(self, task_id: str) -> str | None:
        async with _redis_errors():
            job_id = await self.redis.get(self.keys.job(task_id))
        return text(job_id) if job_id is not None else None

    async def discard(self, view: JobView) -> bool:
        async with _redis_errors():
            done = await self.discard_script(
                keys=[self.keys.stream, self.keys.job(view.job.task_id)],
                args=[GROUP, str(view.ref), view.job.job_id],
            )
        return bool(done)

    async def promote(self, view: JobView) -> bool:
        async with _redis_errors():
            done = await self.promote_script(
                keys=[self.keys.delayed, self.keys.stream],
                args=[view.ref, self.settings.queue_max_length],
            )
        return bool(done)

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
