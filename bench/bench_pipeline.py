"""End-to-end throughput and latency of the pipeline, with plain taskiq for comparison.

N tasks (default 2,000) are created over gRPC, by TaskService.BatchCreateTasks
in batches of 100 (`--create-batch 1`: one CreateTask per task, 64 callers),
each with the dstack quote-report vector inline and hardware, os and
source_code on; every one is verified for real and its report stored in S3
over HTTP (SeaweedFS), on a real PostgreSQL and Redis. The services and the
workers run as processes on this machine, as in production.

Prints tasks/s end to end (first create to last completion) at the peak (N
created at once), then p50/p99 of create -> completed (server timestamps) with
tasks created at half of that peak rate, each process's memory, then the same
N no-op jobs through plain taskiq (RedisStreamBroker, one worker process) on
the same Redis, and the ratio. The last line is

    pipeline_tasks_per_s=<x> taskiq_noop_per_s=<y> ratio=<x/y> p50_ms=<..> p99_ms=<..>

    .venv/bin/python bench/bench_pipeline.py [--tasks 2000] [--workers 1|2|4]
        [--verification-processes 1|2] [--concurrency 64] [--create-batch 100|1]
        [--creators N]
        [--paced-tasks 1000] [--profile DIR]
    .venv/bin/python bench/bench_pipeline.py --metrics-compare [--rounds 2]
        the cost of instrumentation: the same pipeline with METRICS_ENABLED on and
        off, alternating, each side on a fresh database, tasks/s and the ratio
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared" / "gen")]

import grpc  # noqa: E402
import redis  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc  # noqa: E402

from bench.pipeline_load import (  # noqa: E402
    Profiler,
    Target,
    cpu_line,
    cpu_seconds,
    create_paced,
    infra_cpu_seconds,
    memory_line,
)
from tests.fault.stack import pipeline_stack, stack_env  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.vectors import dstack_create_task_json  # noqa: E402

NOOP_TASK = "bench.noop"
# The fault suite's stack polls several times faster than production (to see a
# fault within a second); a throughput figure is taken with the defaults.
PRODUCTION_INTERVALS = {
    "worker_heartbeat_seconds": "2",
    "worker_offline_after_seconds": "15",
    "reconcile_after_seconds": "10",
    "reconcile_interval_seconds": "5",
    "health_probe_interval_seconds": "5",
    "retry_base_seconds": "1",
}


async def _create_all(
    target: Target, count: int, creators: int, batch: int
) -> tuple[list[str], float, float]:
    """Create `count` tasks with `creators` concurrent callers, each call
    BatchCreateTasks of `batch` tasks (CreateTask when `batch` is 1); returns
    the ids and the wall span."""
    body = dstack_create_task_json()
    template = json_format.ParseDict(body, tasks_pb2.CreateTaskRequest())
    ids: list[str] = []
    firsts = iter(range(0, count, batch))
    channel = target.channel()
    stub = tasks_pb2_grpc.TaskServiceStub(channel)

    def one() -> tasks_pb2.CreateTaskRequest:
        request = tasks_pb2.CreateTaskRequest()
        request.CopyFrom(template)
        request.request_id = uuid.uuid4().hex
        return request

    async def creator() -> None:
        for first in firsts:
            size = min(batch, count - first)
            if batch == 1:
                ids.append((await stub.CreateTask(one(), timeout=60)).task.id)
                continue
            request = tasks_pb2.BatchCreateTasksRequest(requests=[one() for _ in range(size)])
            response = await stub.BatchCreateTasks(request, timeout=60)
            ids.extend(task.id for task in response.tasks)

    started = time.perf_counter()
    await asyncio.gather(*(creator() for _ in range(creators)))
    created = time.perf_counter()
    await channel.close()
    return ids, started, created


async def _wait_all_finished(target: Target, count: int, within: float) -> float:
    """Poll the stats until every task is finished; returns when. Once a second:
    the stats are an aggregate over every task, on the service under test."""
    channel = target.channel()
    stub = tasks_pb2_grpc.TaskServiceStub(channel)
    deadline = time.perf_counter() + within
    try:
        while time.perf_counter() < deadline:
            stats = await stub.GetTaskStats(tasks_pb2.GetTaskStatsRequest(), timeout=30)
            if stats.completed + stats.failed + stats.cancelled >= count:
                return time.perf_counter()
            await asyncio.sleep(1.0)
    finally:
        await channel.close()
    raise TimeoutError("the tasks did not finish in time")


async def _latencies(target: Target, ids: list[str]) -> tuple[list[float], dict[str, int], float]:
    """Server-side create -> finished seconds per task, statuses, and the span."""
    channel = target.channel()
    stub = tasks_pb2_grpc.TaskServiceStub(channel)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    first_created, last_finished = float("inf"), 0.0
    sem = asyncio.Semaphore(32)

    async def one(task_id: str) -> None:
        nonlocal first_created, last_finished
        async with sem:
            task = (await stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id), timeout=30)).task
        name = tasks_pb2.TaskStatus.Name(task.status)
        statuses[name] = statuses.get(name, 0) + 1
        created = task.created_at.ToNanoseconds() / 1e9
        finished = task.finished_at.ToNanoseconds() / 1e9
        first_created = min(first_created, created)
        last_finished = max(last_finished, finished)
        latencies.append(finished - created)

    await asyncio.gather(*(one(task_id) for task_id in ids))
    await channel.close()
    return latencies, statuses, last_finished - first_created


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- plain taskiq ----------------------------------------------------------------


def _noop_worker(url: str, queue: str, count: int) -> None:
    """A plain taskiq worker process: runs `count` no-op tasks, then records the time."""
    import logging

    from taskiq.acks import AcknowledgeType
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisStreamBroker

    logging.getLogger("taskiq").setLevel(logging.WARNING)
    broker = RedisStreamBroker(url, queue_name=queue, consumer_group_name="bench", consumer_id="0")
    done = 0
    finish = asyncio.Event()

    @broker.task(task_name=NOOP_TASK)
    async def noop(n: int) -> None:
        nonlocal done
        done += 1
        if done >= count:
            redis.Redis.from_url(url).set(f"{queue}:done", repr(time.time()))
            finish.set()

    async def run() -> None:
        broker.is_worker_process = True
        await broker.startup()
        redis.Redis.from_url(url).set(f"{queue}:ready", "1")
        receiver = Receiver(
            broker, max_async_tasks=100, ack_type=AcknowledgeType.WHEN_EXECUTED, run_startup=False
        )
        await receiver.listen(finish)
        await broker.shutdown()

    asyncio.run(run())


def _wait_key(client: redis.Redis, key: str, interval: float) -> str:
    while True:
        value = client.get(key)
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
        time.sleep(interval)


async def _kick_noops(url: str, queue: str, count: int) -> float:
    """Send `count` no-op jobs through plain taskiq; returns when the first was sent."""
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(url, queue_name=queue, consumer_group_name="bench")
    noop = broker.register_task(lambda n: None, task_name=NOOP_TASK)
    await broker.startup()
    started = time.time()
    sem = asyncio.Semaphore(64)

    async def send(n: int) -> None:
        async with sem:
            await noop.kiq(n)

    await asyncio.gather(*(send(n) for n in range(count)))
    await broker.shutdown()
    return started


def _bench_taskiq(url: str, count: int) -> float:
    """Seconds for `count` no-op jobs through plain taskiq (one worker process,
    100 at once), from the first send to the last done."""
    queue = f"bench-noop-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    worker = subprocess.Popen(
        [sys.executable, __file__, "--noop-worker", url, queue, str(count)], cwd=ROOT
    )
    try:
        _wait_key(client, f"{queue}:ready", 0.05)
        started = asyncio.run(_kick_noops(url, queue, count))
        finished = float(_wait_key(client, f"{queue}:done", 0.01))
        return finished - started
    finally:
        worker.wait(30)
        client.delete(queue, f"{queue}:ready", f"{queue}:done")


# --- our queue alone (no-op handler) ---------------------------------------------


def _queue_noop_worker(url: str, queue: str, count: int) -> None:
    """A worker process whose handler does nothing: the queue's own cost."""
    import dataclasses
    import logging
    from collections.abc import Sequence

    from services.queue.model import Job, JobResult, Outcome
    from services.queue.settings import QueueSettings
    from services.queue.worker import redis_worker
    from shared.config import load_settings

    logging.getLogger().setLevel(logging.WARNING)
    settings = dataclasses.replace(
        load_settings(QueueSettings, env={}),
        redis_url=url,
        queue_name=queue,
        queue_concurrency=64,
        log_level="warning",
    )

    async def run() -> None:
        stop = asyncio.Event()
        done = 0

        class Noop:
            async def process_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
                nonlocal done
                done += len(jobs)
                if done >= count:
                    redis.Redis.from_url(url).set(f"{queue}:done", repr(time.time()))
                    stop.set()
                return [JobResult(Outcome.COMPLETED) for _ in jobs]

        worker = redis_worker(settings)
        runner = asyncio.create_task(worker.run(Noop(), stop))
        await worker.ready.wait()
        redis.Redis.from_url(url).set(f"{queue}:ready", "1")
        await runner
        await worker.backend.close()

    asyncio.run(run())


async def _enqueue_all(url: str, queue: str, count: int) -> float:
    import dataclasses

    from services.queue.redis_backend import RedisQueue
    from services.queue.settings import QueueSettings
    from shared.config import load_settings

    settings = dataclasses.replace(
        load_settings(QueueSettings, env={}), redis_url=url, queue_name=queue
    )
    backend = RedisQueue(settings)
    await backend.start()
    started = time.time()
    sem = asyncio.Semaphore(8)

    async def send(first: int) -> None:
        # As the dispatcher does: EnqueueTasks batches.
        async with sem:
            await backend.enqueue_many([f"noop-{n}" for n in range(first, min(first + 100, count))])

    await asyncio.gather(*(send(n) for n in range(0, count, 100)))
    await backend.close()
    return started


def _bench_our_queue(url: str, count: int) -> float:
    """Seconds for `count` jobs through our queue (EnqueueTask's script, the
    worker's admit/settle, no RPCs), from the first enqueue to the last done."""
    queue = f"bench-queue-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    worker = subprocess.Popen(
        [sys.executable, __file__, "--queue-noop-worker", url, queue, str(count)], cwd=ROOT
    )
    try:
        _wait_key(client, f"{queue}:ready", 0.05)
        started = asyncio.run(_enqueue_all(url, queue, count))
        finished = float(_wait_key(client, f"{queue}:done", 0.01))
        return finished - started
    finally:
        worker.wait(60)
        keys = list(client.scan_iter(match=f"verifier:queue:{{{queue}}}:*"))
        client.delete(f"{queue}:ready", f"{queue}:done", *keys)


# --- main ----------------------------------------------------------------------------


async def _bench_pipeline(args: argparse.Namespace, stack_target: Target) -> dict[str, float]:
    creators = args.creators or (64 if args.create_batch == 1 else 4)
    ids, started, created = await _create_all(stack_target, args.tasks, creators, args.create_batch)
    finished = await _wait_all_finished(stack_target, args.tasks, within=1800)
    if args.pids:
        # From the first create to the last completion (not the reads below).
        print(
            cpu_line(
                args.cpu_before,
                cpu_seconds(args.pids),
                args.tasks,
                args.infra_before,
                infra_cpu_seconds(*args.infra),
            )
        )
    latencies, statuses, server_span = await _latencies(stack_target, ids)
    wall = finished - started
    print(f"statuses: {statuses}")
    print(
        f"created {len(ids)} tasks in {created - started:.2f} s "
        f"({len(ids) / (created - started):.0f} creates/s)"
    )
    return {
        "wall": wall,
        "server_span": server_span,
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "mean": statistics.fmean(latencies),
    }


def _metrics_compare(args: argparse.Namespace) -> None:
    """tasks/s with metrics on and off, alternating sides `--rounds` times (same run)."""
    import tempfile

    rates: dict[str, list[float]] = {"on": [], "off": []}
    with (
        servers.postgres_server() as pg_server,
        servers.redis_server() as redis_url,
        servers.s3_server() as s3,
    ):
        for round_index in range(args.rounds):
            sides = ("on", "off") if round_index % 2 == 0 else ("off", "on")
            for side in sides:
                with servers.postgres_database(pg_server, prefix="verifier_bench") as database:
                    workdir = Path(tempfile.mkdtemp(prefix="verifier-bench-"))
                    env = stack_env(
                        database_url=database,
                        redis_url=redis_url,
                        s3=s3,
                        workdir=workdir,
                        queue_name=f"bench-{uuid.uuid4().hex[:8]}",
                        log_level="warning",
                        queue_concurrency=str(args.concurrency),
                        verification_processes=str(args.verification_processes),
                        database_pool_size="20",
                        job_idle_timeout_seconds="120",
                        **PRODUCTION_INTERVALS,
                        metrics_enabled="true" if side == "on" else "false",
                        **{
                            f"{name}_metrics_listen_addr": f"127.0.0.1:{servers.free_port()}"
                            for name in ("tasks", "queue", "verification", "worker")
                        },
                    )
                    with pipeline_stack(env, workers=args.workers) as stack:
                        target = Target(f"127.0.0.1:{stack.service('tasks').port}", stack.api_key)
                        figures = asyncio.run(_bench_pipeline(args, target))
                    rate = args.tasks / figures["wall"]
                    rates[side].append(rate)
                    print(f"round {round_index + 1}, metrics {side}: {rate:.1f} tasks/s")
    on, off = statistics.fmean(rates["on"]), statistics.fmean(rates["off"])
    print(
        f"metrics on: {on:.1f} tasks/s, off: {off:.1f} tasks/s "
        f"(mean of {args.rounds}); ratio on / off {on / off:.3f}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--noop-worker":
        _noop_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--queue-noop-worker":
        _queue_noop_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=64, help="QUEUE_CONCURRENCY")
    parser.add_argument(
        "--create-batch",
        type=int,
        default=100,
        help="tasks per BatchCreateTasks call at the peak; 1: one CreateTask per task",
    )
    parser.add_argument(
        "--creators",
        type=int,
        default=0,
        help="concurrent create callers (default 4 batch callers, or 64 CreateTask callers)",
    )
    parser.add_argument("--verification-processes", type=int, default=2)
    parser.add_argument(
        "--paced-tasks", type=int, default=1000, help="tasks created at half the peak rate"
    )
    parser.add_argument(
        "--queue-only", action="store_true", help="skip the pipeline: the two no-op figures"
    )
    parser.add_argument(
        "--metrics-compare",
        action="store_true",
        help="the pipeline with metrics on against off, same run (instrumentation cost)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --metrics-compare")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy each process during the peak phase (collapsed stacks in DIR)",
    )
    args = parser.parse_args()
    args.pids = {}
    if args.metrics_compare:
        _metrics_compare(args)
        return
    if args.queue_only:
        with servers.redis_server() as redis_url:
            noop = args.tasks / _bench_taskiq(redis_url, args.tasks)
            ours = args.tasks / _bench_our_queue(redis_url, args.tasks)
        print(f"plain taskiq no-op: {noop:.0f} jobs/s; our queue no-op: {ours:.0f} jobs/s")
        return

    import tempfile

    with (
        servers.postgres_server() as pg_server,
        servers.postgres_database(pg_server, prefix="verifier_bench") as database,
        servers.redis_server() as redis_url,
        servers.s3_server() as s3,
    ):
        workdir = Path(tempfile.mkdtemp(prefix="verifier-bench-"))
        env = stack_env(
            database_url=database,
            redis_url=redis_url,
            s3=s3,
            workdir=workdir,
            queue_name=f"bench-{uuid.uuid4().hex[:8]}",
            log_level="warning",
            queue_concurrency=str(args.concurrency),
            verification_processes=str(args.verification_processes),
            database_pool_size="20",
            job_idle_timeout_seconds="120",
            **PRODUCTION_INTERVALS,
        )
        print(
            f"pipeline: N={args.tasks}, {args.workers} worker process(es) x "
            f"{args.concurrency} jobs, {args.verification_processes} verification processes, "
            f"{os.cpu_count()} cores, created "
            + (
                "one CreateTask per task"
                if args.create_batch == 1
                else f"by BatchCreateTasks of {args.create_batch}"
            )
        )
        with pipeline_stack(env, workers=args.workers) as stack:
            target = Target(f"127.0.0.1:{stack.service('tasks').port}", stack.api_key)
            pids = {name: p.proc.pid for name, p in stack.services.items() if p.proc}
            pids |= {w.name: w.proc.pid for w in stack.workers if w.proc}
            print(memory_line("start", pids))
            args.pids, args.cpu_before = pids, cpu_seconds(pids)
            args.infra = (database, s3.endpoint)
            args.infra_before = infra_cpu_seconds(*args.infra)
            with Profiler(args.profile, pids):
                figures = asyncio.run(_bench_pipeline(args, target))
            print(memory_line(f"{args.tasks} tasks", pids))
            pipeline_rate = args.tasks / figures["wall"]
            paced = asyncio.run(_bench_paced(args, target, pipeline_rate / 2))
            print(memory_line(f"{args.tasks + args.paced_tasks} tasks", pids))
        noop_seconds = _bench_taskiq(redis_url, args.tasks)
        queue_seconds = _bench_our_queue(redis_url, args.tasks)

    noop_rate = args.tasks / noop_seconds
    print(
        f"pipeline end to end: {pipeline_rate:.0f} tasks/s "
        f"({args.tasks} in {figures['wall']:.2f} s; server span {figures['server_span']:.2f} s)"
    )
    print(
        f"create -> completed: p50 {figures['p50'] * 1000:.0f} ms, "
        f"p99 {figures['p99'] * 1000:.0f} ms, mean {figures['mean'] * 1000:.0f} ms"
    )
    print(f"plain taskiq no-op: {noop_rate:.0f} jobs/s ({args.tasks} in {noop_seconds:.2f} s)")
    queue_rate = args.tasks / queue_seconds
    print(
        f"our queue, no-op handler: {queue_rate:.0f} jobs/s ({args.tasks} in "
        f"{queue_seconds:.2f} s; {queue_rate / noop_rate:.2f} of plain taskiq)"
    )
    print(
        f"ratio pipeline / plain taskiq: {pipeline_rate / noop_rate:.3f} "
        f"(plain taskiq is {noop_rate / pipeline_rate:.1f}x faster)"
    )
    print(
        f"at half the peak ({pipeline_rate / 2:.0f} tasks/s, {args.paced_tasks} tasks): "
        f"create -> completed p50 {paced['p50'] * 1000:.0f} ms, p99 {paced['p99'] * 1000:.0f} ms"
    )
    print(
        f"pipeline_tasks_per_s={pipeline_rate:.1f} taskiq_noop_per_s={noop_rate:.1f} "
        f"ratio={pipeline_rate / noop_rate:.4f} p50_ms={paced['p50'] * 1000:.0f} "
        f"p99_ms={paced['p99'] * 1000:.0f}"
    )


async def _bench_paced(args: argparse.Namespace, target: Target, rate: float) -> dict[str, float]:
    """Latency of tasks created at `rate` per second (half of the peak)."""
    ids = await create_paced(target, args.paced_tasks, rate)
    await _wait_all_finished(target, args.tasks + args.paced_tasks, within=1800)
    latencies, statuses, _ = await _latencies(target, ids)
    print(f"paced statuses: {statuses}")
    return {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as exc:
        print(f"RPC failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
