"""The real pipeline as processes: tasks, verification and queue services and
queue workers (`python -m ...`), on a real PostgreSQL, Redis and S3, each
startable, stoppable and killable on its own. Used by the end-to-end pipeline
tests and the fault tests (kill -9, a service or Redis down)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from google.protobuf import json_format
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared.grpc_client import create_channel, health_serving
from shared.tls import CertPaths, channel_credentials
from tests.support.auth import auth_env, bootstrap_admin_key
from tests.support.servers import free_port
from tests.support.vectors import dstack_create_task_json

ROOT = Path(__file__).resolve().parents[2]

SERVICE_COMMANDS = {
    "tasks": ["-m", "services.tasks"],
    "verification": ["-m", "services.verification", "serve"],
    "queue": ["-m", "services.queue"],
}
FINISHED = {
    tasks_pb2.TASK_STATUS_COMPLETED,
    tasks_pb2.TASK_STATUS_FAILED,
    tasks_pb2.TASK_STATUS_CANCELLED,
}


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} runs already"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Its own process group: kill() takes the service with its children
        # (the verification pool), as a container runtime would, and leaves
        # no orphans behind the test.
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if health_serving(f"127.0.0.1:{self.port}"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become SERVING:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        """kill -9 of the process and its children: no cleanup of any kind."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (a stalled process: its sockets stay open, nothing answers), or SIGCONT."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class RedisProcess:
    """A private redis-server on a fixed port that can be stopped and started
    again. Without persistence (the default) it comes back empty, the harshest
    case; `use_aof()` turns on the append-only file (fsync always), so a
    restart keeps every key."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed"
        persistence = (
            ("--appendonly", "yes", "--appendfsync", "always")
            if self.appendonly
            else ("--appendonly", "no")
        )
        self.proc = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", *persistence, "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                # With AOF, LOADING answers ping with an error until the file is read.
                if client.ping() and client.info("persistence").get("loading") == 0:
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def use_aof(self) -> None:
        """Turn the append-only file on in the running server (its current keys
        are written to it) and keep it on across restarts."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        client.config_set("appendfsync", "always")
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress"):
                self.appendonly = True
                return
            time.sleep(0.05)
        raise RuntimeError("Redis did not turn its append-only file on")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class PipelineStack:
    """The services and workers of one pipeline, and async clients to them."""

    env: dict[str, str]
    workdir: Path
    services: dict[str, Process] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)
    # The admin key every client call of the tests carries.
    api_key: str = ""

    # --- processes ----------------------------------------------------------------

    def service(self, name: str) -> Process:
        return self.services[name]

    def add_worker(self, **env: str) -> Process:
        worker_env = {**self.env, **{k.upper(): v for k, v in env.items()}}
        worker = Process(
            f"worker-{len(self.workers)}",
            ["-m", "services.queue.worker"],
            worker_env,
            self.workdir / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker.start()

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        for name in ("queue", "verification", "tasks"):
            if name in self.services:
                self.services[name].stop()

    def logs(self) -> str:
        parts = []
        for process in [*self.services.values(), *self.workers]:
            parts.append(f"==== {process.name}\n{process.tail(2500)}")
        return "\n".join(parts)

    # --- clients ------------------------------------------------------------------

    def channel(self, name: str) -> grpc.aio.Channel:
        """A channel to one service (use as `async with`; inside the test's loop)."""
        return create_channel(f"127.0.0.1:{self.services[name].port}", api_key=self.api_key)

    def internal_channel(self, name: str) -> grpc.aio.Channel:
        """A channel to one service's internal (mutual-TLS) port, as a worker has it:
        with the queue's certificate. For tests that play the worker."""
        creds = channel_credentials(CertPaths.of(self.env["TLS_DIR"], "queue"))
        return create_channel(self.env[f"{name.upper()}_INTERNAL_ADDR"], credentials=creds)

    async def create_task(self, **overrides: Any) -> tasks_pb2.Task:
        request = json_format.ParseDict(
            dstack_create_task_json(**overrides), tasks_pb2.CreateTaskRequest()
        )
        async with self.channel("tasks") as channel:
            response = await tasks_pb2_grpc.TaskServiceStub(channel).CreateTask(request, timeout=30)
        task: tasks_pb2.Task = response.task
        return task

    async def get_task(self, task_id: str) -> tasks_pb2.Task:
        async with self.channel("tasks") as channel:
            response = await tasks_pb2_grpc.TaskServiceStub(channel).GetTask(
                tasks_pb2.GetTaskRequest(id=task_id), timeout=30
            )
        task: tasks_pb2.Task = response.task
        return task

    async def events(self, task_id: str) -> list[tasks_pb2.TaskEvent]:
        async with self.channel("tasks") as channel:
            response = await tasks_pb2_grpc.TaskServiceStub(channel).ListTaskEvents(
                tasks_pb2.ListTaskEventsRequest(id=task_id), timeout=30
            )
        return list(response.events)

    async def queue_status(self) -> queue_pb2.QueueStatus:
        async with self.channel("queue") as channel:
            response = await queue_pb2_grpc.QueueServiceStub(channel).GetQueueStatus(
                queue_pb2.GetQueueStatusRequest(), timeout=10
            )
        status: queue_pb2.QueueStatus = response.status
        return status

    async def wait_finished(
        self, task_ids: list[str], within: float = 120.0
    ) -> list[tasks_pb2.Task]:
        """Poll GetTask until every task is finished; fail with the logs if not."""
        deadline = time.monotonic() + within
        pending = list(task_ids)
        done: dict[str, tasks_pb2.Task] = {}
        async with self.channel("tasks") as channel:
            stub = tasks_pb2_grpc.TaskServiceStub(channel)
            while pending and time.monotonic() < deadline:
                still = []
                for task_id in pending:
                    try:
                        task = (
                            await stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id), timeout=10)
                        ).task
                    except grpc.aio.AioRpcError:
                        still.append(task_id)
                        continue
                    if task.status in FINISHED:
                        done[task_id] = task
                    else:
                        still.append(task_id)
                pending = still
                if pending:
                    await asyncio.sleep(0.2)
        if pending:
            raise AssertionError(
                f"{len(pending)} tasks unfinished, e.g. {pending[:3]}\n{self.logs()}"
            )
        return [done[task_id] for task_id in task_ids]

    async def wait_status(self, task_id: str, status: int, within: float = 30.0) -> None:
        """Poll GetTask until the task has `status`; fail with the logs if not."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (await self.get_task(task_id)).status == status:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {task_id} never reached status {status}\n{self.logs()}")


def stack_env(
    *,
    database_url: str,
    redis_url: str,
    s3: Any | None,
    workdir: Path,
    queue_name: str,
    **overrides: str,
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "VERIFIER_CONFIG")
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue_name,
            "DATA_DIR": str(workdir / "data"),
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
            "QUEUE_CONCURRENCY": "4",
            "RETRY_BUDGET_SECONDS": "120",
            "RETRY_BASE_SECONDS": "0.5",
            "JOB_IDLE_TIMEOUT_SECONDS": "3",
            "WORKER_HEARTBEAT_SECONDS": "0.5",
            "WORKER_OFFLINE_AFTER_SECONDS": "3",
            "RECONCILE_AFTER_SECONDS": "1",
            "RECONCILE_INTERVAL_SECONDS": "0.5",
            "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
            "SHUTDOWN_GRACE_SECONDS": "5",
            "VERIFICATION_PROCESSES": "1",
            # The suites here measure the pipeline, not the per-key limits
            # (tests/integration covers those): 0 turns them off.
            "RATE_LIMIT_CREATE_PER_SECOND": "0",
            "RATE_LIMIT_READ_PER_SECOND": "0",
            # No fixed metrics ports in tests (a test that scrapes sets free ones).
            "TASKS_METRICS_LISTEN_ADDR": "",
            "QUEUE_METRICS_LISTEN_ADDR": "",
            "VERIFICATION_METRICS_LISTEN_ADDR": "",
            "WORKER_METRICS_LISTEN_ADDR": "",
        }
    )
    if s3 is not None:
        env.update(
            {
                "S3_ENDPOINT": s3.endpoint,
                "S3_ACCESS_KEY_ID": s3.access_key_id,
                "S3_SECRET_ACCESS_KEY": s3.secret_access_key,
                "S3_REGION": s3.region,
                "S3_BUCKET": f"reports-{queue_name}",
            }
        )
    env.update({key.upper(): value for key, value in overrides.items()})
    return env


@contextlib.contextmanager
def pipeline_stack(env: dict[str, str], workers: int = 1) -> Iterator[PipelineStack]:
    """Start the three services (and `workers` worker processes when Redis is used)."""
    workdir = Path(tempfile.mkdtemp(prefix="verifier-pipeline-"))
    # Authentication on, as in production: service certificates, an admin key.
    env = auth_env(env, workdir)
    ports = {name: free_port() for name in SERVICE_COMMANDS}
    for name, port in ports.items():
        env[f"{name.upper()}_LISTEN_ADDR"] = f"127.0.0.1:{port}"
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
    stack = PipelineStack(env, workdir)
    try:
        stack.api_key = bootstrap_admin_key(env)
        for name, argv in SERVICE_COMMANDS.items():
            stack.services[name] = Process(name, argv, env, workdir / f"{name}.log", ports[name])
            stack.services[name].start()
        for name in SERVICE_COMMANDS:
            stack.services[name].wait_serving()
        if env.get("REDIS_URL"):
            for _ in range(workers):
                stack.add_worker()
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        _delete_queue_keys(env.get("REDIS_URL", ""), env.get("QUEUE_NAME", ""))


def _delete_queue_keys(url: str, queue_name: str) -> None:
    """Leave a shared Redis as it was found."""
    if not url or not queue_name:
        return
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url, socket_timeout=5)
        keys = list(client.scan_iter(match=f"verifier:queue:{{{queue_name}}}:*"))
        if keys:
            client.delete(*keys)
        client.close()
