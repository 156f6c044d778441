"""Statements and audit rows per task on the tasks service's PostgreSQL for
the batched worker contract (TaskWorkerService), counted by pg_stat_statements
on a throwaway server of this run. (Before the worker contract, the per-task
RPCs StartTask, UpdateTaskProgress and CompleteTask cost 6 statements and 5
audit rows a task: insert, acknowledgement, start, progress, read + complete.)

    .venv/bin/python bench/count_statements.py [--tasks 200] [--batch 50]
        [--create-batch 1|100] [--evidence] [--per-statement]

The task life: CreateTask (BatchCreateTasks of --create-batch tasks when it is
more than 1; --evidence: each with the dstack vector inline, as
bench_pipeline.py creates them), the dispatcher's enqueue and its
acknowledgement, start, one progress report, GetTaskInputs (the engine's one
read per batch), completion with a signed summary. The queue is an in-process
stand-in of the QueueClient protocol (only PostgreSQL is counted); the
verification service runs for real, for the key that signs summaries.
Counted: statements touching the tasks or task_events tables (health probes,
the scheduler and pg_stat_statements itself excluded), and task_events rows.
--per-statement adds, per statement, its calls and per task its execution
time, rows, shared blocks (hit/read/dirtied/written) and WAL (records, full
page images, bytes), and the CPU the server's processes spent per task.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from verifier.verification.v1 import verification_pb2  # noqa: E402

from services.tasks import migrate  # noqa: E402
from services.tasks.dispatch import Enqueued  # noqa: E402
from services.tasks.main import build_service  # noqa: E402
from services.tasks.settings import TasksSettings  # noqa: E402
from services.verification.main import build_spec as verification_spec  # noqa: E402
from services.verification.report import load_or_create_signing_key  # noqa: E402
from services.verification.settings import VerificationSettings  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.grpc_client import create_channel  # noqa: E402
from shared.grpc_server import start_server  # noqa: E402
from tests.support.servers import free_port, postgres_database, throwaway_postgres  # noqa: E402
from tests.support.vectors import dstack_create_task_json  # noqa: E402


class MemoryQueue:
    """The QueueClient protocol in memory: every task is taken at once."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}

    async def enqueue_many(self, task_ids: list[str]) -> list[Enqueued]:
        answers = []
        for task_id in task_ids:
            already = task_id in self.jobs
            self.jobs.setdefault(task_id, f"job-{len(self.jobs) + 1}")
            answers.append(Enqueued(task_id, self.jobs[task_id], already))
        return answers

    async def version(self) -> str:
        return "memory queue"

    async def close(self) -> None:
        pass


def summary(task_id: str, attempt: int, key_id: str) -> verification_pb2.ReportSummary:
    message = verification_pb2.ReportSummary(
        verdict=verification_pb2.VERDICT_PASSED,
        tcb_status="UpToDate",
        s3_key=f"reports/{task_id}/{attempt}.json",
        task_id=task_id,
        attempt=attempt,
        signing_key_id=key_id,
    )
    for check in ("HARDWARE", "OS", "SOURCE_CODE", "TEE_CONTROLLED_KEY", "CERTIFICATE_KEY"):
        message.checks.add(
            check=verification_pb2.Check.Value(f"CHECK_{check}"),
            status=verification_pb2.CHECK_STATUS_PASSED,
        )
    return message


def create(app_id: str, evidence: bool) -> tasks_pb2.CreateTaskRequest:
    if evidence:
        request = json_format.ParseDict(dstack_create_task_json(), tasks_pb2.CreateTaskRequest())
        request.request_id = uuid.uuid4().hex
        return request
    return tasks_pb2.CreateTaskRequest(
        app_id=app_id,
        app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
        model_or_domain="demo.phala.network",
    )


async def wait_queued(db: psycopg.AsyncConnection[tuple[int]], ids: list[str]) -> None:
    """Until the dispatcher recorded every acknowledgement (this poll is not counted)."""
    for _ in range(1000):
        cursor = await db.execute(POLL, [ids])
        row = await cursor.fetchone()
        if row is not None and row[0] == 0:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the dispatcher did not enqueue every task")


POLL = (
    "/* bench-poll */ SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND status = 'pending'"
)


COUNTED = """
WHERE (query ILIKE '%tasks%' OR query ILIKE '%task_events%')
  AND query NOT ILIKE '%pg_stat_statements%'
  AND query NOT ILIKE '%apps%'
  AND query NOT ILIKE '%bench-poll%'
"""
COUNT = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements" + COUNTED
PER_STATEMENT = (
    "SELECT query, calls, total_exec_time, rows, shared_blks_hit, shared_blks_read,"
    " shared_blks_dirtied, shared_blks_written, wal_records, wal_fpi, wal_bytes"
    " FROM pg_stat_statements" + COUNTED + " ORDER BY total_exec_time DESC"
)


def label(query: str) -> str:
    """A short name of one of the store's statements."""
    text = " ".join(query.split())
    if "INSERT INTO tasks" in text:
        return "insert tasks+events"
    if "UPDATE tasks SET" in text:
        sets = text.split("UPDATE tasks SET", 1)[1].split(" FROM ", 1)[0].split(" WHERE ", 1)[0]
        columns = [part.split("=", 1)[0].strip() for part in sets.split(", ") if "=" in part]
        return "update " + ",".join(columns[:3])
    if "tasks.evidence" in text and text.startswith("SELECT"):
        return "select with evidence"
    return text[:60]


def server_cpu_seconds(pid_file: Path) -> float:
    """CPU seconds of the PostgreSQL server (postmaster and every child) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    root = int(pid_file.read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(proc.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def measure(url: str, args: argparse.Namespace, data: Path, pid_file: Path) -> None:
    common: dict[str, Any] = {
        "data_dir": str(data),
        "health_probe_interval_seconds": 3600,
        # Only PostgreSQL is measured here: no keys, no TLS.
        "auth_enabled": False,
    }
    verification_settings = dataclasses.replace(
        load_settings(VerificationSettings, env={}),
        verification_listen_addr=f"127.0.0.1:{free_port()}",
        verification_processes=1,
        verification_metrics_listen_addr="",
        **common,
    )
    verification = await start_server(verification_spec(verification_settings))
    key = load_or_create_signing_key(data / "keys" / "report-signing.pem")
    key_id = hashlib.sha256(
        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).hexdigest()
    settings = dataclasses.replace(
        load_settings(TasksSettings, env={}),
        tasks_metrics_listen_addr="",
        database_url=url,
        tasks_listen_addr="127.0.0.1:0",
        verification_addr=f"127.0.0.1:{verification.port}",
        reconcile_interval_seconds=3600,
        reconcile_after_seconds=3600,
        scheduler_enabled=False,
        **common,
    )
    await asyncio.to_thread(migrate.upgrade, url)
    service = build_service(settings, queue=MemoryQueue())
    running = await start_server(service.spec)
    channel = create_channel(f"127.0.0.1:{running.port}")
    tasks = tasks_pb2_grpc.TaskServiceStub(channel)
    worker = worker_pb2_grpc.TaskWorkerServiceStub(channel)
    db = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    async def counted(name: str, path: object) -> None:
        await db.execute("SELECT pg_stat_statements_reset()")
        cpu_before = server_cpu_seconds(pid_file)
        ids: list[str] = await path()  # type: ignore[operator]
        cpu = server_cpu_seconds(pid_file) - cpu_before
        statements = (await (await db.execute(COUNT)).fetchone())[0]  # type: ignore[index]
        per_statement = await (await db.execute(PER_STATEMENT)).fetchall()
        events = (
            await (
                await db.execute(
                    "SELECT count(*) FROM task_events WHERE task_id = ANY(%s::uuid[])", [ids]
                )
            ).fetchone()
        )[0]  # type: ignore[index]
        n = len(ids)
        print(
            f"path={name} tasks={n} statements={statements} statements_per_task="
            f"{statements / n:.2f} audit_rows_per_task={events / n:.2f}"
        )
        if args.per_statement:
            print(f"server_cpu_ms_per_task={1000 * cpu / n:.3f} (every server process)")
            print(
                f"{'statement':<44} {'calls':>6} {'ms/task':>8} {'rows/t':>7} {'hit/t':>7}"
                f" {'read/t':>7} {'dirt/t':>7} {'writ/t':>7} {'walrec/t':>8} {'fpi/t':>6}"
                f" {'walB/t':>8}"
            )
            for row in per_statement:
                query, calls, ms, rows, hit, read, dirtied, written, records, fpi, wal = row
                print(
                    f"{label(query)[:44]:<44} {calls:>6} {ms / n:>8.3f} {rows / n:>7.2f}"
                    f" {hit / n:>7.1f} {read / n:>7.1f} {dirtied / n:>7.2f} {written / n:>7.2f}"
                    f" {records / n:>8.2f} {fpi / n:>6.2f} {int(wal) / n:>8.0f}"
                )

    async def create_all(app_id: str) -> list[str]:
        # Created `batch` at a time, concurrently, as clients would.
        ids: list[str] = []
        if args.create_batch > 1:
            for _ in range(0, args.tasks, args.create_batch):
                response = await tasks.BatchCreateTasks(
                    tasks_pb2.BatchCreateTasksRequest(
                        requests=[create(app_id, args.evidence) for _ in range(args.create_batch)]
                    )
                )
                ids.extend(t.id for t in response.tasks)
        else:
            for _ in range(0, args.tasks, args.batch):
                created = await asyncio.gather(
                    *(tasks.CreateTask(create(app_id, args.evidence)) for _ in range(args.batch))
                )
                ids.extend(c.task.id for c in created)
        await wait_queued(db, ids)
        return ids

    async def batched() -> list[str]:
        ids = await create_all("bb02")
        for start in range(0, len(ids), args.batch):
            batch = ids[start : start + args.batch]
            started = await worker.StartTasks(
                worker_pb2.StartTasksRequest(worker_id="w", task_ids=batch)
            )
            leases = [
                worker_pb2.TaskAttempt(task_id=t.task_id, attempt=t.attempt) for t in started.tasks
            ]
            inputs = await worker.GetTaskInputs(worker_pb2.GetTaskInputsRequest(tasks=leases))
            assert all(t.status.code == 0 for t in inputs.tasks), inputs.tasks[0].status
            await worker.ReportProgress(
                worker_pb2.ReportProgressRequest(
                    progress=[worker_pb2.TaskProgress(task=lease, progress=50) for lease in leases]
                )
            )
            completions = []
            for lease in leases:
                data = summary(lease.task_id, lease.attempt, key_id).SerializeToString()
                completions.append(
                    worker_pb2.TaskCompletion(
                        task=lease,
                        signed_summary=verification_pb2.SignedSummary(
                            summary=data, signature=key.sign(data).hex(), key_id=key_id
                        ),
                    )
                )
            response = await worker.CompleteTasks(
                worker_pb2.CompleteTasksRequest(worker_id="w", tasks=completions)
            )
            assert all(ack.status.code == 0 for ack in response.acks), response.acks[0]
        return ids

    try:
        await counted(f"batched_worker_contract_batch{args.batch}", batched)
    finally:
        await db.close()
        await channel.close()
        await running.stop(0.5)
        await verification.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--create-batch", type=int, default=1, help="BatchCreateTasks of N (1: CreateTask)"
    )
    parser.add_argument("--evidence", action="store_true", help="the dstack vector inline")
    parser.add_argument("--per-statement", action="store_true")
    args = parser.parse_args()
    with (
        throwaway_postgres(shared_preload_libraries="pg_stat_statements") as server,
        postgres_database(server.url, prefix="count_statements") as url,
        tempfile.TemporaryDirectory() as data,
    ):
        asyncio.run(measure(url, args, Path(data), server.datadir / "postmaster.pid"))


if __name__ == "__main__":
    main()
