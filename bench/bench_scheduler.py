"""Scheduled re-verification at scale: N apps (default 10,000) all due at once.

The apps are written straight into a fresh PostgreSQL database; then the queue
service (on Redis, no workers, so jobs wait) and R tasks-service replicas start as
processes, each running its scheduler every second. Measured from the replicas'
start: when every app has its task, and when every task is QUEUED (acknowledged
by the queue). Then checked: each app has exactly one scheduled task, and the
queue holds exactly N jobs. Runs with one replica and with two (the peer), same run.

    .venv/bin/python bench/bench_scheduler.py [--apps 10000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared" / "gen")]

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc  # noqa: E402

from services.tasks import migrate  # noqa: E402
from services.tasks.tables import apps  # noqa: E402
from shared.grpc_client import create_channel  # noqa: E402
from tests.fault.stack import Process, stack_env  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.auth import auth_env, bootstrap_admin_key  # noqa: E402


def insert_apps(url: str, count: int) -> None:
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = [
        {
            "id": uuid.uuid4().hex + uuid.uuid4().hex[:8],
            "name": f"bench-{i}",
            "app_config_type": "phala_cloud",
            "contract_address": "",
            "model_or_domain": "bench.phala.network",
            "verification_flags": {},
            "expected_compose_hash": "",
            "interval_seconds": None,
            "retry_interval_seconds": None,
            "cron": "",
            "state": "enabled",
            "schedule_paused": False,
            "source": "api",
            "latest_task_id": None,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.insert(apps), rows)
    engine.dispose()


def counts(url: str) -> tuple[int, int, int, int]:
    """(scheduled tasks, distinct apps with one, queued or later, max tasks per app)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT app_id), "
            "count(*) FILTER (WHERE status <> 'pending'), "
            "coalesce((SELECT max(c) FROM (SELECT count(*) c FROM tasks "
            "WHERE created_by = 'scheduler' GROUP BY app_id) x), 0) "
            "FROM tasks WHERE created_by = 'scheduler'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def queue_waiting(port: int, api_key: str) -> int:
    async with create_channel(f"127.0.0.1:{port}", api_key=api_key) as channel:
        status = await queue_pb2_grpc.QueueServiceStub(channel).GetQueueStatus(
            queue_pb2.GetQueueStatusRequest(), timeout=10
        )
    return int(status.status.waiting)


def run(server: str, redis_url: str, count: int, replicas: int, batch: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="verifier-bench-sched-"))
    procs: list[Process] = []
    try:
        with servers.postgres_database(server, prefix="verifier_bench_sched") as url:
            migrate.upgrade(url)
            insert_apps(url, count)
            queue_port = servers.free_port()
            env = stack_env(
                database_url=url,
                redis_url=redis_url,
                s3=None,
                workdir=workdir,
                queue_name=f"bench-sched-{uuid.uuid4().hex[:8]}",
                log_level="warning",
                queue_addr=f"127.0.0.1:{queue_port}",
                queue_listen_addr=f"127.0.0.1:{queue_port}",
                migrate_on_start="false",
                scheduler_interval_seconds="1",
                scheduler_batch_size=str(batch),
                reconcile_after_seconds="3600",
                database_pool_size="10",
            )
            # Authentication on, as in production (the queue's calls to the
            # tasks service go over its internal mutual-TLS port).
            env = auth_env(env, workdir)
            api_key = bootstrap_admin_key(env)
            queue = Process(
                "queue", ["-m", "services.queue"], env, workdir / "queue.log", queue_port
            )
            procs.append(queue.start())
            queue.wait_serving()
            started = time.monotonic()
            for index in range(replicas):
                port = servers.free_port()
                replica_env = {**env, "TASKS_LISTEN_ADDR": f"127.0.0.1:{port}"}
                if index:
                    # Each replica its own internal port; the queue calls the first.
                    internal = f"127.0.0.1:{servers.free_port()}"
                    replica_env["TASKS_INTERNAL_LISTEN_ADDR"] = internal
                replica = Process(
                    f"tasks-{index}",
                    ["-m", "services.tasks"],
                    replica_env,
                    workdir / f"tasks-{index}.log",
                    port,
                )
                procs.append(replica.start())
            all_created = all_queued = 0.0
            deadline = started + 600
            while time.monotonic() < deadline:
                total, distinct, queued, _ = counts(url)
                now = time.monotonic() - started
                if total >= count and not all_created:
                    all_created = now
                if queued >= count:
                    all_queued = now
                    break
                time.sleep(0.2)
            if not all_queued:
                raise RuntimeError(f"not all queued in time: {counts(url)}\n{procs[-1].tail()}")
            time.sleep(3.0)  # three more passes per replica: nothing new may appear
            total, distinct, queued, most = counts(url)
            waiting = asyncio.run(queue_waiting(queue_port, api_key))
            assert total == count and distinct == count and most == 1, (total, distinct, most)
            assert waiting == count, f"the queue holds {waiting} jobs, expected {count}"
            return {"created": all_created, "queued": all_queued}
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="SCHEDULER_BATCH_SIZE")
    args = parser.parse_args()
    print(f"{args.apps} apps due at once; {os.cpu_count()} cores; load {os.getloadavg()}")
    with servers.postgres_server() as server, servers.redis_server() as redis_url:
        figures = {n: run(server, redis_url, args.apps, n, args.batch) for n in (1, 2)}
    for replicas, f in figures.items():
        print(
            f"{replicas} replica(s): every app's task created in {f['created']:.2f} s, "
            f"all {args.apps} QUEUED in {f['queued']:.2f} s "
            f"({args.apps / f['queued']:.0f} apps/s, from process start); each exactly once"
        )
    ratio = figures[2]["queued"] / figures[1]["queued"]
    print(f"ratio two replicas / one (time to all queued): {ratio:.2f}")


if __name__ == "__main__":
    main()
