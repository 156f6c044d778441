"""Redis-only behaviour: reclaim of a dead consumer's jobs, keep-alive of long
jobs, offline workers, the pause re-read, trimming, and the duplicate guard."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from services.queue.broker import GROUP, encode_job
from services.queue.consumer import LEAVE_TIMEOUT_SECONDS, STOP_BACKGROUND_SECONDS
from services.queue.main import build_spec
from services.queue.model import Job, WorkerRecord, WorkerState
from services.queue.redis_backend import RedisQueue
from services.queue.worker import redis_worker
from shared.grpc_client import create_channel
from shared.grpc_server import start_server
from tests.integration.queue.conftest import queue_test_settings
from tests.integration.queue.support import (
    RecordingHandler,
    delete_queue_keys,
    running_worker,
    wait_until,
)
from tests.support.servers import throwaway_redis

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisQueue]:
    settings = queue_test_settings(redis_url, tmp_path)
    backend = RedisQueue(settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
        await delete_queue_keys(redis_url, settings.queue_name)


async def test_pause_flag_is_observed_without_its_pubsub_message(queue: RedisQueue) -> None:
    """The 1 s re-read catches a flag whose notification was lost."""
    async with running_worker(queue.settings, RecordingHandler()) as worker:
        await queue.redis.set(queue.keys.paused, "1")  # no PUBLISH
        await wait_until(lambda: worker.paused, "the worker to re-read the flag")
        await queue.redis.delete(queue.keys.paused)
        await wait_until(lambda: not worker.paused, "the worker to see the resume")


async def test_worker_starting_on_a_paused_queue_takes_nothing(queue: RedisQueue) -> None:
    await queue.set_paused(True)
    await queue.enqueue_many(["waiting-task"])
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler) as worker:
        assert worker.paused
        await asyncio.sleep(1.5)
        assert handler.runs == []
    assert (await queue.status()).waiting == 1


async def test_worker_not_heard_from_is_shown_offline(queue: RedisQueue) -> None:
    record = WorkerRecord("gone-worker", "host-x", 4242, time.time(), 2, {"t-9"}, 3)
    await queue.heartbeat(record)
    (listed,) = await queue.list_workers()
    assert listed.state is WorkerState.ONLINE
    assert (await queue.status()).workers_online == 1

    async def offline() -> bool:
        (worker,) = await queue.list_workers()
        return worker.state is WorkerState.OFFLINE

    await wait_until(offline, "the silent worker to be shown offline")
    (worker,) = await queue.list_workers()
    assert (worker.id, worker.host, worker.pid, worker.jobs_in_hand, worker.processed) == (
        "gone-worker",
        "host-x",
        4242,
        ("t-9",),
        3,
    )
    assert (await queue.status()).workers_online == 0


async def test_cleanly_stopped_worker_leaves_the_registry(queue: RedisQueue) -> None:
    async with running_worker(queue.settings, RecordingHandler()) as worker:
        assert [w.id for w in await queue.list_workers()] == [worker.id]
    assert await queue.list_workers() == []


async def test_jobs_of_a_dead_consumer_are_reclaimed_after_the_idle_timeout(
    queue: RedisQueue,
) -> None:
    await queue.enqueue_many(["orphan"])
    # A worker that read the job and died: the entry is pending under its name.
    taken = await queue.redis.xreadgroup(GROUP, "dead-worker", {queue.keys.stream: ">"}, count=1)
    assert len(taken[0][1]) == 1
    assert (await queue.status()).active == 1
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler):
        await wait_until(lambda: handler.finished, "the orphan to be reclaimed and run")
        await wait_until(_no_pending(queue), "the reclaimed entry to be acknowledged")
    assert [job.task_id for job in handler.runs] == ["orphan"]
    # The dead worker's delivery counts: the job knows it is a redelivery.
    assert [job.deliveries for job in handler.runs] == [2]
    assert (await queue.status()).completed == 1


def _no_pending(queue: RedisQueue) -> object:
    async def check() -> bool:
        summary = await queue.redis.xpending(queue.keys.stream, GROUP)
        return int(summary["pending"]) == 0

    return check


async def test_job_running_longer_than_the_idle_timeout_is_not_run_twice(
    queue: RedisQueue,
) -> None:
    """The heartbeat keeps the entry claimed (idle timeout 2 s, job 5 s)."""
    slow, idle = RecordingHandler(), RecordingHandler()
    slow.gate.clear()
    async with running_worker(queue.settings, slow):
        await queue.enqueue_many(["long-job"])
        await wait_until(lambda: slow.in_hand == 1, "the long job to start")
        async with running_worker(queue.settings, idle):
            await asyncio.sleep(queue.settings.job_idle_timeout_seconds * 2.5)
            slow.gate.set()
            await wait_until(lambda: slow.finished, "the long job to finish")
    assert len(slow.runs) == 1
    assert idle.runs == []
    assert (await queue.status()).completed == 1


async def test_two_deliveries_of_one_task_never_run_at_the_same_time(
    queue: RedisQueue,
) -> None:
    """The duplicate guard: the second delivery waits while the first runs."""
    job = Job("dup-job", "dup-task")
    await queue.redis.set(queue.keys.job(job.task_id), job.job_id)
    handler = RecordingHandler()
    handler.gate.clear()
    async with running_worker(queue.settings, handler), running_worker(queue.settings, handler):
        for _ in range(2):
            await queue.redis.xadd(queue.keys.stream, {"data": encode_job(job)})
        await wait_until(lambda: handler.in_hand == 1, "one delivery to run")
        await asyncio.sleep(1.0)
        assert handler.in_hand == 1
        handler.gate.set()
        await wait_until(_no_pending(queue), "both deliveries to be settled")
        await wait_until(lambda: _delayed_empty(queue), "the deferred delivery to come back")
        await wait_until(_no_pending(queue), "the deferred delivery to be settled")
    assert handler.max_running_per_task == 1
    # The job finished with its first run; the held-back delivery ran after it
    # (the task's lifecycle makes it a no-op) or was dropped as stale.
    assert 1 <= len(handler.runs) <= 2


async def _delayed_empty(queue: RedisQueue) -> bool:
    return int(await queue.redis.zcard(queue.keys.delayed)) == 0


async def test_unreadable_message_is_dropped_not_redelivered_forever(queue: RedisQueue) -> None:
    await queue.redis.xadd(queue.keys.stream, {"data": b"\x80 not a taskiq message"})
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler):
        await queue.enqueue_many(["after-garbage"])
        await wait_until(lambda: handler.finished, "the good job to run")
        await wait_until(_no_pending(queue), "the garbage to be acknowledged")
    assert [job.task_id for job in handler.runs] == ["after-garbage"]


async def test_stream_is_trimmed_below_entries_still_needed(queue: RedisQueue) -> None:
    for n in range(300):
        await queue.enqueue_many([f"trim-{n}"])
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler):
        await wait_until(lambda: len(handler.finished) == 300, "300 jobs", within=60)
        await wait_until(_no_pending(queue), "every entry acknowledged")
    await queue.enqueue_many(["kept"])
    await queue.trim()
    length = int(await queue.redis.xlen(queue.keys.stream))
    assert length < 150  # trimmed in whole macro nodes, never past "kept"
    status = await queue.status()
    assert status.waiting == 1


async def test_pending_entries_of_a_stopped_worker_are_given_back(queue: RedisQueue) -> None:
    """A reply lost to cancellation at shutdown is returned, not left to the idle timeout."""
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler) as worker:
        name = worker.id
        await queue.set_paused(True)
        await wait_until(lambda: worker.paused, "the pause")
        await queue.enqueue_many(["lost-reply"])
        # Read as this consumer behind the worker's back, as if the reply was lost.
        await queue.redis.xreadgroup(GROUP, name, {queue.keys.stream: ">"}, count=1)
    consumers = await queue.redis.xinfo_consumers(queue.keys.stream, GROUP)
    assert name not in [c["name"].decode() for c in consumers]
    status = await queue.status()
    assert (status.waiting, status.active) == (1, 0)


async def test_redis_version_is_reported_by_the_probe(queue: RedisQueue) -> None:
    version = await queue.probe()
    assert version and version[0].isdigit()


async def test_stream_recreated_under_the_queue_still_delivers(queue: RedisQueue) -> None:
    await queue.redis.delete(queue.keys.stream)
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler):
        await queue.enqueue_many(["after-flush"])
        await wait_until(lambda: handler.finished, "the job on the recreated stream")
    assert [job.task_id for job in handler.runs] == ["after-flush"]


async def test_redis_client_used_is_shared_with_the_broker(queue: RedisQueue) -> None:
    assert isinstance(queue.redis, Redis)
    assert queue.redis.connection_pool is queue.broker.connection_pool


async def test_service_answers_unavailable_and_not_serving_while_redis_is_down(
    tmp_path: Path,
) -> None:
    with throwaway_redis() as url:
        settings = queue_test_settings(url, tmp_path)
        server = await start_server(build_spec(settings))
        # SERVING first (health says NOT_SERVING until its first probe round),
        # so the NOT_SERVING below is the probe seeing Redis gone.
        async with create_channel(f"127.0.0.1:{server.port}") as first:
            first_health = health_pb2_grpc.HealthStub(first)

            async def serving() -> bool:
                reply = await first_health.Check(health_pb2.HealthCheckRequest())
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await wait_until(serving, "health to report SERVING while Redis is up")
    # The context stopped that Redis: the service keeps running without it.
    channel = create_channel(f"127.0.0.1:{server.port}")
    try:
        queue_client = queue_pb2_grpc.QueueServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await queue_client.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id="t-down"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest())
            return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

        await wait_until(not_serving, "health to report NOT_SERVING")
    finally:
        await channel.close()
        await server.stop(grace=1.0)


async def test_stream_entry_without_data_is_acknowledged(queue: RedisQueue) -> None:
    await queue.redis.xadd(queue.keys.stream, {"other": b"x"})
    handler = RecordingHandler()
    async with running_worker(queue.settings, handler):
        await queue.enqueue_many(["next-to-empty"])
        await wait_until(lambda: handler.finished, "the good job to run")
        await wait_until(_no_pending(queue), "the empty entry to be acknowledged")
    assert [job.task_id for job in handler.runs] == ["next-to-empty"]


async def test_stopping_worker_ends_within_seconds_while_redis_does_not_answer(
    tmp_path: Path,
) -> None:
    """Stopped, then cancelled (as asyncio.wait_for does at its timeout), a worker
    whose Redis is frozen ends within its bounded leave: its Redis calls, each
    retried by redis-py with a 10 s socket timeout, once kept it for minutes."""
    with throwaway_redis() as url:
        worker = redis_worker(queue_test_settings(url, tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(RecordingHandler(), stop))
        try:
            await wait_until(lambda: worker.ready.is_set(), "the worker to start")
            pid = int((await worker.backend.redis.info("server"))["process_id"])
            os.kill(pid, signal.SIGSTOP)
            try:
                stop.set()
                await asyncio.wait({task}, timeout=2.0)
                task.cancel()
                bound = STOP_BACKGROUND_SECONDS + LEAVE_TIMEOUT_SECONDS + 10.0
                done, _ = await asyncio.wait({task}, timeout=bound)
                assert done, f"the worker still ran {bound} s after its cancel"
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            stop.set()
            await asyncio.wait({task}, timeout=30)
            await worker.backend.close()
