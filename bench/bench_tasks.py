"""Throughput and latency of the tasks service on PostgreSQL.

Runs `python -m services.tasks` as its own process on a dedicated database it
creates (and drops), with a QueueService stand-in process answering
EnqueueTask, and measures from this process over gRPC:
  - CreateTask and GetTask calls per second, p50/p99 latency, 32 concurrent callers;
  - the worker lifecycle (TaskWorkerService StartTasks + ReportProgress + FailTasks,
    one task a call) per second;
  - ListTasks latency (page of 50, p50/p99) with 1,000,000 rows, at the first,
    a middle and the last page, unfiltered and with each filter.
It finds PostgreSQL as the tests do (tests.support.servers). Not a test: it prints.

    .venv/bin/python bench/bench_tasks.py [--rows 1000000] [--calls 6000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "shared" / "gen"))

from verifier.queue.v1 import queue_pb2, queue_pb2_grpc  # noqa: E402
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from verifier.verification.v1 import verification_pb2  # noqa: E402

from services.tasks import migrate  # noqa: E402
from services.tasks.model import AppConfigType, Cursor, ListFilter, TaskStatus  # noqa: E402
from services.tasks.paging import encode_page_token  # noqa: E402
from shared.tls import CertPaths, channel_credentials  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.auth import auth_env, create_key  # noqa: E402

PAGE = 50
# Loaded rows are created one millisecond apart from here.
LOAD_START = datetime(2026, 1, 1, tzinfo=UTC)


# --- the queue stand-in (a separate process, so it does not share our GIL) -----------


class _StandInQueue(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}

    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        known = self.jobs.get(request.task_id)
        if known:
            return queue_pb2.EnqueueTaskResponse(job_id=known, already_enqueued=True)
        self.jobs[request.task_id] = job = f"job-{len(self.jobs) + 1}"
        return queue_pb2.EnqueueTaskResponse(job_id=job)

    async def GetQueueStatus(
        self, request: queue_pb2.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetQueueStatusResponse:
        return queue_pb2.GetQueueStatusResponse(
            status=queue_pb2.QueueStatus(queue_name="bench", backend="stand-in")
        )


async def _serve_standin(port: int) -> None:
    server = grpc.aio.server()
    # Only EnqueueTask and GetQueueStatus are stood in; the rest answer UNIMPLEMENTED.
    queue_pb2_grpc.add_QueueServiceServicer_to_server(_StandInQueue(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- measuring ------------------------------------------------------------------------


def _percentile(sorted_ms: list[float], fraction: float) -> float:
    index = min(len(sorted_ms) - 1, round(fraction * (len(sorted_ms) - 1)))
    return sorted_ms[index]


def _report(name: str, latencies: list[float], elapsed: float) -> None:
    ms = sorted(latency * 1000 for latency in latencies)
    print(
        f"  {name:<34} {len(ms) / elapsed:8.0f} calls/s   "
        f"p50 {_percentile(ms, 0.5):6.2f} ms   p99 {_percentile(ms, 0.99):6.2f} ms"
    )


async def _concurrently(
    calls: int, concurrency: int, call: Callable[[int], Awaitable[Any]]
) -> tuple[list[float], float]:
    latencies: list[float] = []
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < calls:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def _sequential(calls: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies


def _create_request(index: int) -> tasks_pb2.CreateTaskRequest:
    return tasks_pb2.CreateTaskRequest(
        request_id=f"bench-{index}",
        app_id=f"{index % 100:04x}",  # hex, as phala_cloud tasks need
        app_name="bench",
        app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
        model_or_domain="bench.phala.network",
    )


@dataclass(frozen=True)
class Access:
    """How the bench reaches the tasks service in one auth mode: the public
    channel (plaintext or TLS) with the API key's metadata, and the worker
    contract's channel (the internal mutual-TLS port when auth is on)."""

    public: grpc.aio.Channel
    internal: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...] = ()


async def bench_calls(access: Access, calls: int, concurrency: int) -> dict[str, float]:
    """Runs the three call mixes; returns rate/p50/p99 per mix for the mode table."""
    figures: dict[str, float] = {}
    md = access.metadata or None
    stub = tasks_pb2_grpc.TaskServiceStub(access.public)
    # Warm up the pool and prepared statements.
    await stub.CreateTask(_create_request(-1), metadata=md)
    ids: list[str] = [""] * calls

    async def create(index: int) -> None:
        ids[index] = (await stub.CreateTask(_create_request(index), metadata=md)).task.id

    async def get(index: int) -> None:
        await stub.GetTask(tasks_pb2.GetTaskRequest(id=ids[index % calls]), metadata=md)

    worker = worker_pb2_grpc.TaskWorkerServiceStub(access.internal)

    async def lifecycle(index: int) -> None:
        # The worker contract, one task a call (no verification service here,
        # so the task ends by FailTasks rather than a signed CompleteTasks).
        task_id = ids[index]
        started = await worker.StartTasks(
            worker_pb2.StartTasksRequest(worker_id="bench", task_ids=[task_id])
        )
        lease = worker_pb2.TaskAttempt(task_id=task_id, attempt=started.tasks[0].attempt)
        await worker.ReportProgress(
            worker_pb2.ReportProgressRequest(
                progress=[worker_pb2.TaskProgress(task=lease, progress=50)]
            )
        )
        await worker.FailTasks(
            worker_pb2.FailTasksRequest(
                worker_id="bench",
                tasks=[worker_pb2.TaskFailure(task=lease, error_message="bench")],
            )
        )

    print(f"calls with {concurrency} concurrent callers (server: its own process):")
    latencies, elapsed = await _concurrently(calls, concurrency, create)
    figures.update(_figures("create", latencies, elapsed))
    _report("CreateTask", latencies, elapsed)
    latencies, elapsed = await _concurrently(calls * 2, concurrency, get)
    figures.update(_figures("get", latencies, elapsed))
    _report("GetTask", latencies, elapsed)
    latencies, elapsed = await _concurrently(calls, concurrency, lifecycle)
    figures.update(_figures("worker", latencies, elapsed))
    ms = sorted(latency * 1000 for latency in latencies)
    print(
        f"  {'StartTasks+Progress+FailTasks (3)':<34} {len(ms) / elapsed:8.0f} tasks/s   "
        f"p50 {_percentile(ms, 0.5):6.2f} ms   p99 {_percentile(ms, 0.99):6.2f} ms"
    )
    return figures


def _figures(name: str, latencies: list[float], elapsed: float) -> dict[str, float]:
    ms = sorted(latency * 1000 for latency in latencies)
    return {
        f"{name}_rate": len(ms) / elapsed,
        f"{name}_p50": _percentile(ms, 0.5),
        f"{name}_p99": _percentile(ms, 0.99),
    }


# --- a million rows -----------------------------------------------------------------

_LOAD_SQL = """
INSERT INTO tasks (id, job_name, request_id, app_id, app_name, app_config_type,
                   app_metadata, verification_flags, status, progress, created_at, updated_at)
SELECT gen_random_uuid(),
       'verify:' || kind,
       NULL,
       'app-' || (i %% 1000),
       'bench',
       kind,
       '{}'::json,
       '{"hardware": true, "os": true, "source_code": true, "tee_controlled_key": true,
         "certificate_key": true, "dns_caa": false, "ct_log": false}'::json,
       (ARRAY['pending','queued','active','completed','failed','cancelled'])[1 + ((i / 7) %% 6)],
       0,
       %(start)s::timestamptz + i * interval '1 millisecond',
       %(start)s::timestamptz + i * interval '1 millisecond'
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT CASE WHEN i %% 3 = 0 THEN 'redpill' ELSE 'phala_cloud' END AS kind) k
"""


def load_rows(url: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute(_LOAD_SQL, {"rows": rows, "start": LOAD_START})
        conn.execute("VACUUM ANALYZE tasks")
    return time.perf_counter() - started


def _cursor_at(url: str, list_filter: ListFilter, depth: int) -> Cursor | None:
    """The keyset cursor after `depth` rows of the filtered listing (setup only)."""
    if depth == 0:
        return None
    clauses: list[str] = ["TRUE"]
    params: dict[str, Any] = {}
    if list_filter.status:
        clauses.append("status = %(status)s")
        params["status"] = list_filter.status.value
    if list_filter.app_id:
        clauses.append("app_id = %(app_id)s")
        params["app_id"] = list_filter.app_id
    if list_filter.app_config_type:
        clauses.append("app_config_type = %(kind)s")
        params["kind"] = list_filter.app_config_type.value
    if list_filter.created_after:
        clauses.append("created_at >= %(after)s")
        params["after"] = list_filter.created_after
    sql = (
        f"SELECT created_at, id FROM tasks WHERE {' AND '.join(clauses)} "
        f"ORDER BY created_at DESC, id DESC OFFSET {depth - 1} LIMIT 1"
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    if row is None:
        return None
    return Cursor(row[0], str(row[1]))


def _count(url: str, list_filter: ListFilter) -> int:
    with psycopg.connect(url) as conn:
        if list_filter.app_id:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE app_id = %s", (list_filter.app_id,)
            ).fetchone()
        elif list_filter.status and list_filter.app_config_type:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE status = %s AND app_config_type = %s",
                (list_filter.status.value, list_filter.app_config_type.value),
            ).fetchone()
        elif list_filter.status:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE status = %s", (list_filter.status.value,)
            ).fetchone()
        elif list_filter.app_config_type:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE app_config_type = %s",
                (list_filter.app_config_type.value,),
            ).fetchone()
        elif list_filter.created_after:
            row = conn.execute(
                "SELECT count(*) FROM tasks WHERE created_at >= %s", (list_filter.created_after,)
            ).fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM tasks").fetchone()
    assert row is not None
    return int(row[0])


def _request(list_filter: ListFilter, token: str) -> tasks_pb2.ListTasksRequest:
    request = tasks_pb2.ListTasksRequest(page_size=PAGE, page_token=token)
    if list_filter.status:
        request.status = {
            TaskStatus.COMPLETED: tasks_pb2.TASK_STATUS_COMPLETED,
            TaskStatus.FAILED: tasks_pb2.TASK_STATUS_FAILED,
        }[list_filter.status]
    if list_filter.app_id:
        request.app_id = list_filter.app_id
    if list_filter.app_config_type:
        request.app_config_type = verification_pb2.APP_CONFIG_TYPE_REDPILL
    if list_filter.created_after:
        request.created_after.FromDatetime(list_filter.created_after)
    return request


async def bench_list(target: str, url: str, rows: int, samples: int) -> None:
    halfway = LOAD_START + timedelta(milliseconds=rows // 2)
    filters = {
        "no filter": ListFilter(),
        "status=completed": ListFilter(status=TaskStatus.COMPLETED),
        "app_id=app-7": ListFilter(app_id="app-7"),
        "type=redpill": ListFilter(app_config_type=AppConfigType.REDPILL),
        "created_after (last half)": ListFilter(created_after=halfway),
        "status=failed + type=redpill": ListFilter(
            status=TaskStatus.FAILED, app_config_type=AppConfigType.REDPILL
        ),
    }
    print(f"ListTasks, page of {PAGE}, {samples} sequential calls per row:")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        for name, list_filter in filters.items():
            matching = _count(url, list_filter)
            for depth_name, depth in (
                ("first page", 0),
                ("middle", matching // 2),
                ("last page", max(0, matching - PAGE)),
            ):
                cursor = _cursor_at(url, list_filter, depth)
                token = encode_page_token(cursor, list_filter) if cursor else ""
                request = _request(list_filter, token)
                response = await stub.ListTasks(request)
                assert len(response.tasks) == min(PAGE, matching - depth), (name, depth_name)
                latencies = await _sequential(samples, functools.partial(stub.ListTasks, request))
                ms = sorted(latency * 1000 for latency in latencies)
                print(
                    f"  {name:<30} {depth_name:<11} (row {depth:>7} of {matching:>7})  "
                    f"p50 {_percentile(ms, 0.5):6.2f} ms   p99 {_percentile(ms, 0.99):6.2f} ms"
                )


def explain_deep(url: str) -> None:
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM tasks WHERE status = 'completed'").fetchone()
        assert count is not None
        row = conn.execute(
            "SELECT created_at, id FROM tasks WHERE status = 'completed' "
            "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (max(0, int(count[0]) - PAGE),),
        ).fetchone()
        assert row is not None
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id FROM tasks "
            "WHERE status = 'completed' AND (created_at, id) < (%s, %s) "
            "ORDER BY created_at DESC, id DESC LIMIT 51",
            row,
        ).fetchall()
    print("plan of a deep status=completed page:")
    for (line,) in plan:
        print("   ", line)


# --- orchestration --------------------------------------------------------------------


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


async def _wait_serving(
    channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], log: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 60
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = await asyncio.to_thread(log.read_text)
            raise SystemExit(f"tasks service exited:\n{tail[-3000:]}")
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.3)
    raise SystemExit("tasks service did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--modes",
        default="off,key,tls",
        help="auth modes of the calls phase, each its own server: off (AUTH_ENABLED=false), "
        "key (an API key on every call, the worker contract over mutual TLS), tls (key, and "
        "the public port over TLS)",
    )
    parser.add_argument("--queue-standin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.queue_standin:
        asyncio.run(_serve_standin(args.queue_standin))
        return

    with servers.postgres_server() as server_url:
        print(f"PostgreSQL: {server_url.rsplit('@', 1)[-1]}; {os.cpu_count()} cores")
        results: dict[str, dict[str, float]] = {}
        for mode in args.modes.split(","):
            print(f"\n== auth mode {mode!r}")
            with servers.postgres_database(server_url, prefix="verifier_bench_calls") as url:
                migrate.upgrade(url)
                results[mode] = asyncio.run(_run_phase("calls", url, args, mode))
        print_auth_cost(results)
        if args.rows:
            with servers.postgres_database(server_url, prefix="verifier_bench_list") as url:
                migrate.upgrade(url)
                print(f"\nloading {args.rows:,} rows ...", flush=True)
                print(f"  loaded and analysed in {load_rows(url, args.rows):.1f} s")
                asyncio.run(_run_phase("list", url, args, "off"))


def print_auth_cost(results: dict[str, dict[str, float]]) -> None:
    """Each auth mode beside AUTH_ENABLED=false, from the same run."""
    base = results.get("off")
    print("\nthe cost of authentication and TLS (ratio of rates to off):")
    for mode, f in results.items():
        ratio = ""
        if base and mode != "off":
            ratio = (
                f"  (x{f['create_rate'] / base['create_rate']:.2f} create,"
                f" x{f['get_rate'] / base['get_rate']:.2f} get,"
                f" x{f['worker_rate'] / base['worker_rate']:.2f} worker)"
            )
        print(
            f"  {mode:<4} CreateTask {f['create_rate']:5.0f}/s p50 {f['create_p50']:.1f}"
            f" p99 {f['create_p99']:.1f} ms; GetTask {f['get_rate']:5.0f}/s"
            f" p50 {f['get_p50']:.1f} p99 {f['get_p99']:.1f} ms;"
            f" worker contract {f['worker_rate']:4.0f} tasks/s{ratio}"
        )


def _auth_env(mode: str, workdir: Path) -> dict[str, str]:
    """The tasks service's settings for one auth mode (see --modes)."""
    if mode == "off":
        return {"AUTH_ENABLED": "false"}
    return auth_env(
        {
            "TLS_PUBLIC": "true" if mode == "tls" else "false",
            "IDENTITY_CACHE_SECONDS": "10",  # the default (the test helper's is 2)
            # The buckets are computed on every call, never refusing at this load.
            "RATE_LIMIT_CREATE_PER_SECOND": "1000000",
            "RATE_LIMIT_CREATE_BURST": "1000000",
            "RATE_LIMIT_READ_PER_SECOND": "1000000",
            "RATE_LIMIT_READ_BURST": "1000000",
        },
        workdir,
    )


def _access(mode: str, env: dict[str, str], target: str) -> Access:
    if mode == "off":
        return Access(grpc.aio.insecure_channel(target), grpc.aio.insecure_channel(target))
    certs = Path(env["TLS_DIR"])
    internal = grpc.aio.secure_channel(
        env["TASKS_INTERNAL_LISTEN_ADDR"],
        channel_credentials(CertPaths.of(certs, "queue")),
    )
    public = (
        grpc.aio.secure_channel(
            target,
            channel_credentials(CertPaths.of(certs, "queue"), client_cert=False),
        )
        if mode == "tls"
        else grpc.aio.insecure_channel(target)
    )
    key = create_key(env, "bench", "tasks.submit,tasks.read")
    return Access(public, internal, (("authorization", f"Bearer {key}"),))


async def _run_phase(phase: str, url: str, args: argparse.Namespace, mode: str) -> dict[str, float]:
    tasks_port, queue_port = servers.free_port(), servers.free_port()
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "TASKS_LISTEN_ADDR": f"127.0.0.1:{tasks_port}",
        "QUEUE_ADDR": f"127.0.0.1:{queue_port}",
        "LOG_LEVEL": "warning",
        "MIGRATE_ON_START": "false",
        **_auth_env(mode, Path(tempfile.mkdtemp(prefix="bench-tasks-certs-"))),
    }
    queue = _start([__file__, "--queue-standin", str(queue_port)], env, logs / "bench-queue.log")
    tasks_log = logs / "bench-tasks.log"
    tasks = _start(["-m", "services.tasks"], env, tasks_log)
    target = f"127.0.0.1:{tasks_port}"
    access = _access(mode, env, target)
    figures: dict[str, float] = {}
    try:
        await _wait_serving(access.public, tasks, tasks_log)
        if phase == "calls":
            figures = await bench_calls(access, args.calls, args.concurrency)
        else:
            await bench_list(target, url, args.rows, args.samples)
            explain_deep(url)
    finally:
        await access.public.close()
        await access.internal.close()
        for proc in (tasks, queue):
            proc.send_signal(signal.SIGTERM)
        for proc in (tasks, queue):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return figures


if __name__ == "__main__":
    main()
