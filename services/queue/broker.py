"""The Redis side of the queue: key names, the atomic Lua scripts, and a taskiq
stream broker that workers read through.

taskiq-redis's RedisStreamBroker gives the stream, the consumer group and the
connection pool; the worker reads through `fetch` rather than taskiq's Receiver,
because it takes jobs in batches (up to its free slots in one XREADGROUP).
What this subclass adds:
- capacity: a read asks for exactly the worker's free slots, so one worker
  never hoards jobs that idle workers could run;
- reclaim: it runs XAUTOCLAIM on a timer, not only when new work arrives, so a
  dead worker's jobs come back on an idle queue too;
- give-back: entries read after a pause, or still held at shutdown, are put
  back on the stream instead of waiting for the idle timeout.

A job in hand is never reclaimed while its worker lives: the worker's heartbeat
re-claims its own entries (XCLAIM ... JUSTID resets their idle time), so a job
may run longer than job_idle_timeout_seconds without being delivered twice.

Messages are taskiq's JSON messages (never pickle) carrying just the task id
and the attempt number.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq.message import TaskiqMessage
from taskiq_redis import RedisStreamBroker

from shared.log import get_logger

from .model import Job

log = get_logger(__name__)

TASK_NAME = "verifier.verify_task"
GROUP = "verifier-workers"
# A job's idempotency key outlives any sane wait; it is cleared when the job
# finishes. The TTL only bounds the damage of a key whose job was lost with
# Redis data (the reconciler can enqueue the task again after it).
JOB_KEY_TTL_SECONDS = 24 * 3600
# The id of the request that enqueued the job (see Job.request_id).
REQUEST_ID_LABEL = "request_id"


class QueueKeys:
    """Every Redis key of one queue. The {name} hash tag keeps them in one
    cluster slot, so the Lua scripts may touch several."""

    def __init__(self, queue_name: str) -> None:
        self.name = queue_name
        prefix = f"verifier:queue:{{{queue_name}}}"
        self.stream = f"{prefix}:stream"
        self.delayed = f"{prefix}:delayed"
        self.paused = f"{prefix}:paused"
        self.epoch = f"{prefix}:epoch"
        self.control = f"{prefix}:control"
        self.completed = f"{prefix}:completed"
        self.failed = f"{prefix}:failed"
        self.workers = f"{prefix}:workers"
        self._worker = f"{prefix}:worker:"
        self._job = f"{prefix}:job:"
        self._lock = f"{prefix}:lock:"

    def worker(self, worker_id: str) -> str:
        return self._worker + worker_id

    def job(self, task_id: str) -> str:
        return self._job + task_id

    def lock(self, task_id: str) -> str:
        return self._lock + task_id


# EnqueueTask: at most one job per task (SET NX of the job key and XADD in one
# step, so a crash never leaves a key without its job). Refuses when the stream
# is full rather than letting MAXLEN trim jobs nobody has read.
ENQUEUE_LUA = """
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
local maxlen = tonumber(ARGV[3])
if redis.call('XLEN', KEYS[2]) >= maxlen then return {-1, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'data', ARGV[2])
return {1, ARGV[1]}
"""

# The duplicate guard before a job runs: a message of a job that is no longer
# the task's job is stale; a task another worker holds is busy.
ADMIT_LUA = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 'stale' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 'run'
"""

# A run's result in one step: ack the entry, drop our lock, then either put the
# next attempt in the delayed set (due time from Redis's clock) or clear the
# job key, and count it.
SETTLE_LUA = """
if ARGV[2] ~= '' then redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) end
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
local action = ARGV[5]
if action == 'retry' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[7]), ARGV[6])
  local current = redis.call('GET', KEYS[2])
  if (not current) or current == ARGV[3] then
    redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[8])
  end
elseif action ~= 'stale' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
end
if action == 'completed' then redis.call('INCR', KEYS[5]) end
if action == 'failed' then redis.call('INCR', KEYS[6]) end
return 1
"""

# Delayed jobs whose time has come go back to the stream (atomic, so several
# processes running it never move one twice).
MOVE_DUE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, payload in ipairs(due) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[2]), '*', 'data', payload)
  redis.call('ZREM', KEYS[1], payload)
end
return #due
"""

# Put entries this consumer holds back on the stream as new entries.
GIVE_BACK_LUA = """
local n = 0
for i = 4, #ARGV, 2 do
  local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #owned == 1 then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'data', ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# At a worker's clean exit: whatever its consumer still holds (an XREADGROUP
# reply lost to cancellation) goes back to the stream, then the consumer goes.
RELEASE_CONSUMER_LUA = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
local n = 0
for _, entry in ipairs(pending) do
  local id = entry[1]
  local rows = redis.call('XRANGE', KEYS[1], id, id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  if #rows > 0 then
    local fields = rows[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'data' then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'data', fields[j + 1])
        n = n + 1
      end
    end
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return n
"""


def encode_job(job: Job) -> bytes:
    """The taskiq JSON message of a job (what XADD stores under `data`)."""
    message = TaskiqMessage(
        task_id=job.job_id,
        task_name=TASK_NAME,
        labels={"ack_type": "when_executed", REQUEST_ID_LABEL: job.request_id},
        args=[],
        kwargs={
            "task_id": job.task_id,
            "attempt": job.attempt,
            "first_fault_at": job.first_fault_at,
        },
    )
    return message.model_dump_json().encode()


def decode_job(data: bytes) -> Job:
    message = TaskiqMessage.model_validate_json(data)
    return Job(
        job_id=message.task_id,
        task_id=str(message.kwargs["task_id"]),
        attempt=int(message.kwargs.get("attempt", 1)),
        request_id=str(message.labels.get(REQUEST_ID_LABEL, "")),
        first_fault_at=float(message.kwargs.get("first_fault_at", 0.0)),
    )


def text(value: Any) -> str:
    """A Redis reply value as text (replies are bytes unless decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class VerifierStreamBroker(RedisStreamBroker):
    """RedisStreamBroker with batched capacity-bounded reads, timed reclaim and give-back."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        *,
        consumer_name: str | None = None,
        concurrency: int = 1,
        idle_timeout_seconds: float = 60.0,
        maxlen: int = 1_000_000,
        read_block_ms: int = 500,
    ) -> None:
        self.keys = QueueKeys(queue_name)
        super().__init__(
            url,
            queue_name=self.keys.stream,
            consumer_group_name=GROUP,
            consumer_name=consumer_name,
            # "0", not "$": a group created after the first XADD still sees it.
            consumer_id="0",
            mkstream=True,
            xread_block=read_block_ms,
            maxlen=maxlen,
            approximate=True,
            idle_timeout=int(idle_timeout_seconds * 1000),
            xread_count=concurrency,
            max_connection_pool_size=64,
            socket_connect_timeout=3,
            socket_timeout=10,
            # A connection the server closed (a Redis restart) is retried on a
            # fresh one instead of failing the call; idle ones are pinged first.
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            health_check_interval=10,
        )
        self.concurrency = concurrency
        self.idle_timeout_ms = int(idle_timeout_seconds * 1000)
        self.reclaim_interval_seconds = max(0.5, min(idle_timeout_seconds / 4, 5.0))
        self.redis: Redis = Redis(connection_pool=self.connection_pool)
        self.enqueue_script = self.redis.register_script(ENQUEUE_LUA)
        self.admit_script = self.redis.register_script(ADMIT_LUA)
        self.settle_script = self.redis.register_script(SETTLE_LUA)
        self.move_due_script = self.redis.register_script(MOVE_DUE_LUA)
        self.give_back_script = self.redis.register_script(GIVE_BACK_LUA)
        self.release_script = self.redis.register_script(RELEASE_CONSUMER_LUA)
        # Worker-side state: stream entries read and not yet settled (for the
        # keep-alive and the give-back).
        self.in_hand: dict[str, bytes] = {}
        self._empty: list[str] = []
        self._reclaim_cursor = "0-0"
        self._next_reclaim = 0.0
        # Delivery counts of reclaimed entries, until they are handed out.
        self._deliveries: dict[str, int] = {}

    # --- setup ------------------------------------------------------------------

    async def declare_group(self) -> None:
        """Create the stream and the consumer group (idempotent); before any send."""
        try:
            await self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _declare_consumer_group(self) -> None:
        await self.declare_group()

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.redis.aclose(close_connection_pool=False)

    # --- reading --------------------------------------------------------------------

    async def fetch(self, count: int, block_ms: int) -> list[tuple[str, bytes, int]]:
        """Up to `count` entries for this consumer: first those a dead worker
        left idle past the idle timeout (checked every reclaim interval, so an
        idle queue gets them back too), else new ones, waiting at most
        `block_ms`. Each comes with how many times it was handed out."""
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.reclaim_interval_seconds
            claimed = await self._reclaim(count)
            if claimed:
                return [(key, data, self._deliveries.pop(key, 2)) for key, data in claimed]
        try:
            reply: Any = await self.redis.xreadgroup(
                GROUP, self.consumer_name, {self.keys.stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream was deleted under us (a flush): recreate the group.
                # The queue service notices the lost epoch and requeues the tasks.
                await self._safe(self.declare_group())
            raise
        out: list[tuple[str, bytes]] = []
        for _stream, entries in reply or ():
            out.extend(self._take(entries))
        await self._drop_empty()
        return [(key, data, 1) for key, data in out]

    async def _reclaim(self, count: int) -> list[tuple[str, bytes]]:
        """XAUTOCLAIM entries idle longer than the idle timeout (their worker died)."""
        reply: Any = await self.redis.xautoclaim(
            self.keys.stream,
            GROUP,
            self.consumer_name,
            self.idle_timeout_ms,
            self._reclaim_cursor,
            count=count,
        )
        cursor, entries, deleted = reply
        self._reclaim_cursor = text(cursor)
        if self._reclaim_cursor != "0-0":
            self._next_reclaim = 0.0  # more to scan: continue on the next read
        if deleted:
            log.error("queue.reclaimed_entries_missing", entries=[text(d) for d in deleted])
        claimed = self._take(entries)
        await self._drop_empty()
        if claimed:
            await self._count_deliveries([entry_id for entry_id, _ in claimed])
            log.warning("queue.reclaimed", count=len(claimed), idle_ms=self.idle_timeout_ms)
        return claimed

    async def _count_deliveries(self, entry_ids: list[str]) -> None:
        """Read the stream's delivery counter of reclaimed entries (XAUTOCLAIM
        does not return it). Reclaims are rare: one XPENDING per entry is cheap."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(self.keys.stream, GROUP, entry_id, entry_id, 1)
            replies = await pipe.execute()
        for entry_id, reply in zip(entry_ids, replies, strict=True):
            if reply:
                self._deliveries[entry_id] = int(reply[0]["times_delivered"])

    def _take(self, entries: Any) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in entries or ():
            data = (fields or {}).get(b"data")
            key = text(entry_id)
            if data is None:
                self._empty.append(key)  # not a job: acknowledged, or it would come back
                continue
            self.in_hand[key] = data
            out.append((key, data))
        return out

    async def _drop_empty(self) -> None:
        if self._empty:
            empty, self._empty = self._empty, []
            log.warning("queue.dropped_entries_without_data", entries=empty)
            await self.redis.xack(self.keys.stream, GROUP, *empty)

    def settled(self, entry_ids: list[str]) -> None:
        """Forget entries once their results are recorded."""
        for entry_id in entry_ids:
            self.in_hand.pop(entry_id, None)

    async def give_back(self, entry_ids: list[str]) -> None:
        """Return entries this worker holds but will not run to the stream."""
        args: list[Any] = [GROUP, self.consumer_name, self.maxlen or 0]
        for entry_id in entry_ids:
            data = self.in_hand.pop(entry_id, None)
            if data is not None:
                args.extend((entry_id, data))
        # If this fails the entries stay pending and are reclaimed after the idle timeout.
        await self._safe(self.give_back_script(keys=[self.keys.stream], args=args))

    async def release_consumer(self) -> int:
        """At a clean exit: return anything still pending for this consumer, delete it."""
        result = await self.release_script(
            keys=[self.keys.stream], args=[GROUP, self.consumer_name, self.maxlen or 0]
        )
        return int(result)

    async def keep_alive(self, lock_keys: list[str], lock_ttl_ms: int) -> None:
        """Reset the idle time of the entries in hand and extend their task locks."""
        entry_ids: list[Any] = list(self.in_hand)
        if not entry_ids and not lock_keys:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if entry_ids:
                pipe.xclaim(self.keys.stream, GROUP, self.consumer_name, 0, entry_ids, justid=True)
            for key in lock_keys:
                pipe.pexpire(key, lock_ttl_ms)
            await pipe.execute()

    @staticmethod
    async def _safe(awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            log.warning("queue.redis_call_failed", error=str(exc))
            return None
