"""Helpers for the queue's integration tests: a job handler that records what the
workers hand it (the queue's own mechanics are under test, not the pipeline),
and a wait-until that polls a condition."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from services.queue.consumer import BatchWorker
from services.queue.model import Job, JobResult, Outcome
from services.queue.settings import QueueSettings
from services.queue.worker import redis_worker
from shared.config import load_settings
from tests.support.hang_dump import await_chain


def make_settings(**overrides: Any) -> QueueSettings:
    """Defaults (no environment) with the test's overrides."""
    # The queue's own mechanics; authentication has its tests in tests/integration/auth.
    return dataclasses.replace(
        load_settings(QueueSettings, env={}), **{"auth_enabled": False, **overrides}
    )


def unique_queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def wait_until(
    predicate: Callable[[], Any], what: str, within: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll until the predicate is truthy; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class RecordingHandler:
    """A BatchHandler that records every run and batch. Results are scripted
    per task (default COMPLETED); `gate` holds every job until it is set."""

    def __init__(self) -> None:
        self.runs: list[Job] = []
        self.finished: list[Job] = []
        self.scripts: dict[str, deque[JobResult]] = defaultdict(deque)
        self.gate = asyncio.Event()
        self.gate.set()
        self.running: Counter[str] = Counter()
        self.max_running_per_task = 0
        self.batches: list[list[str]] = []

    def script(self, task_id: str, *results: JobResult) -> None:
        self.scripts[task_id].extend(results)

    def runs_of(self, task_id: str) -> list[Job]:
        return [job for job in self.runs if job.task_id == task_id]

    @property
    def in_hand(self) -> int:
        return sum(self.running.values())

    async def process_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        self.batches.append([job.task_id for job in jobs])
        return list(await asyncio.gather(*(self.process(job) for job in jobs)))

    async def process(self, job: Job) -> JobResult:
        self.runs.append(job)
        self.running[job.task_id] += 1
        self.max_running_per_task = max(self.max_running_per_task, self.running[job.task_id])
        try:
            await self.gate.wait()
            script = self.scripts[job.task_id]
            return script.popleft() if script else JobResult(Outcome.COMPLETED, "passed")
        finally:
            self.running[job.task_id] -= 1
            self.finished.append(job)


@contextlib.asynccontextmanager
async def running_worker(settings: QueueSettings, handler: Any) -> AsyncIterator[BatchWorker]:
    """A Redis worker in this process, reading, until the block ends (then a clean stop)."""
    worker = redis_worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(handler, stop))
    try:
        await wait_until(lambda: worker.ready.is_set() or task.done(), "the worker to start")
        if task.done():
            task.result()
        yield worker
    finally:
        stop.set()
        try:
            await stopped(task, "the worker", within=30)
        finally:
            await worker.backend.close()


async def stopped(task: asyncio.Task[Any], what: str, within: float) -> None:
    """Wait for a task told to stop; fail naming where it waits if it does not
    (asyncio.wait_for would wait for ever for a task that outlives its cancel)."""
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        where = " > ".join(
            f"{frame.f_code.co_name}:{frame.f_lineno}" for frame in await_chain(task.get_coro())
        )
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        state = "ended after a cancel" if done else "still running after a cancel"
        raise AssertionError(f"{what} did not stop within {within} s ({state}); it was in {where}")
    task.result()


async def delete_queue_keys(redis_url: str, queue_name: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"verifier:queue:{{{queue_name}}}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
