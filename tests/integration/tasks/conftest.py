"""Fixtures: the real tasks service (in-process gRPC server on 127.0.0.1:0) on
a real PostgreSQL database of this run, or on a fresh SQLite file.

The queue service is another team's; here a contract stand-in answers
QueueService.EnqueueTask over a real socket, records what it was sent, and
can be switched to UNAVAILABLE to play a queue outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import (
    apps_pb2,
    apps_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from verifier.verification.v1 import verification_pb2

from services.tasks import migrate
from services.tasks.main import TasksService, build_service
from services.tasks.settings import TasksSettings
from services.verification.main import build_spec as verification_spec
from services.verification.report import load_or_create_signing_key
from services.verification.settings import VerificationSettings
from shared import errors
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import RunningServer, ServiceSpec, start_server
from tests.support import servers

QUEUE_SERVICE = "verifier.queue.v1.QueueService"
BACKENDS = ["postgresql", "sqlite"]


class StandInQueue(queue_pb2_grpc.QueueServiceServicer):
    """QueueService.EnqueueTask and QueueIntakeService.EnqueueTasks as their
    contract says: idempotent per task id."""

    def __init__(self) -> None:
        self.enqueued: dict[str, str] = {}
        self.calls: list[str] = []
        # The size of each EnqueueTasks batch.
        self.batches: list[int] = []
        self.available = True
        self._called = asyncio.Event()

    async def wait_for_calls(self, count: int) -> None:
        while len(self.calls) < count:
            self._called.clear()
            await self._called.wait()

    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        self.calls.append(request.task_id)
        self._called.set()
        if not self.available:
            raise errors.Unavailable("the queue is down (stand-in)")
        if request.task_id in self.enqueued:
            return queue_pb2.EnqueueTaskResponse(
                job_id=self.enqueued[request.task_id], already_enqueued=True
            )
        job_id = f"job-{len(self.enqueued) + 1}"
        self.enqueued[request.task_id] = job_id
        return queue_pb2.EnqueueTaskResponse(job_id=job_id)

    async def EnqueueTasks(
        self, request: queue_pb2.EnqueueTasksRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTasksResponse:
        self.batches.append(len(request.task_ids))
        response = queue_pb2.EnqueueTasksResponse()
        for task_id in request.task_ids:
            self.calls.append(task_id)
            self._called.set()
            if not self.available:
                raise errors.Unavailable("the queue is down (stand-in)")
            already = task_id in self.enqueued
            if not already:
                self.enqueued[task_id] = f"job-{len(self.enqueued) + 1}"
            response.tasks.add(
                task_id=task_id, job_id=self.enqueued[task_id], already_enqueued=already
            )
        return response

    def forget(self, task_id: str) -> None:
        """Lose a job, as a Redis restarted without persistence would."""
        self.enqueued.pop(task_id, None)

    async def GetQueueStatus(
        self, request: queue_pb2.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.GetQueueStatusResponse:
        return queue_pb2.GetQueueStatusResponse(
            status=queue_pb2.QueueStatus(queue_name="stand-in", backend="embedded")
        )


@dataclass
class Verification:
    """The real verification service, for its published signing key."""

    running: RunningServer
    key: Ed25519PrivateKey

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def key_id(self) -> str:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()

    def sign(
        self, summary: verification_pb2.ReportSummary, task_id: str, attempt: int
    ) -> verification_pb2.SignedSummary:
        """The summary as the engine signs it, for this task and attempt."""
        summary.task_id, summary.attempt, summary.signing_key_id = task_id, attempt, self.key_id
        data = summary.SerializeToString()
        return verification_pb2.SignedSummary(
            summary=data, signature=self.key.sign(data).hex(), key_id=self.key_id
        )


@pytest.fixture(scope="session")
async def verification(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Verification]:
    """The verification service, in-process on a real socket (one engine process)."""
    data = tmp_path_factory.mktemp("verification")
    verification = await start_verification(verification_settings(data))
    yield verification
    await verification.running.stop(0.5)


def verification_settings(data: Path, **overrides: Any) -> VerificationSettings:
    """The verification service's settings for these tests, with its data in
    `data` (one engine process, no metrics port, no authentication)."""
    return dataclasses.replace(
        load_settings(VerificationSettings, env={}),
        data_dir=str(data),
        verification_listen_addr=f"127.0.0.1:{servers.free_port()}",
        verification_processes=1,
        health_probe_interval_seconds=1.0,
        shutdown_grace_seconds=0.5,
        verification_metrics_listen_addr="",
        # The tasks domain's tests; authentication has its own (tests/integration/auth).
        auth_enabled=False,
        **overrides,
    )


async def start_verification(settings: VerificationSettings) -> Verification:
    running = await start_server(verification_spec(settings))
    # The key the service loaded (created on its first start) from its data folder.
    key = load_or_create_signing_key(Path(settings.data_dir) / "keys" / "report-signing.pem")
    return Verification(running, key)


@dataclass
class Harness:
    backend: str
    service: TasksService
    running: RunningServer
    channel: grpc.aio.Channel
    stub: tasks_pb2_grpc.TaskServiceStub
    queue: StandInQueue
    database_url: str
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    verification: Verification | None = None

    @property
    def worker(self) -> worker_pb2_grpc.TaskWorkerServiceStub:
        return worker_pb2_grpc.TaskWorkerServiceStub(self.channel)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def close(self) -> None:
        await self.channel.close()
        await self.running.stop(0.5)
        for cleanup in reversed(self.cleanups):
            await cleanup()


class _Intake(queue_pb2_grpc.QueueIntakeServiceServicer):
    def __init__(self, queue: StandInQueue) -> None:
        self.queue = queue

    async def EnqueueTasks(
        self, request: queue_pb2.EnqueueTasksRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTasksResponse:
        return await self.queue.EnqueueTasks(request, context)


def _register_standin(servicer: StandInQueue, server: grpc.aio.Server) -> None:
    queue_pb2_grpc.add_QueueServiceServicer_to_server(servicer, server)
    queue_pb2_grpc.add_QueueIntakeServiceServicer_to_server(_Intake(servicer), server)


async def start_queue_standin() -> tuple[StandInQueue, RunningServer]:
    servicer = StandInQueue()
    running = await start_server(
        ServiceSpec(
            name="queue-standin",
            service_names=[QUEUE_SERVICE, "verifier.queue.v1.QueueIntakeService"],
            register=lambda server: _register_standin(servicer, server),
            listen_addr="127.0.0.1:0",
            health_probe_interval_seconds=60,
            shutdown_grace_seconds=0.5,
        )
    )
    return servicer, running


async def start_harness(
    backend: str,
    database_url: str,
    *,
    queue: tuple[StandInQueue, RunningServer] | None = None,
    verification: Verification | None = None,
    **overrides: str,
) -> Harness:
    """Migrate the database and start the tasks service on it."""
    cleanups: list[Callable[[], Awaitable[None]]] = []
    if queue is None:
        queue = await start_queue_standin()
        cleanups.append(lambda: queue[1].stop(0.1))
    standin, queue_server = queue
    await asyncio.to_thread(migrate.upgrade, database_url)
    env = {
        "DATABASE_URL": database_url,
        "QUEUE_ADDR": f"127.0.0.1:{queue_server.port}",
        "HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        "SHUTDOWN_GRACE_SECONDS": "1",
        # The reconciler stays out of the way unless a test asks for it.
        "RECONCILE_AFTER_SECONDS": "3600",
        "RECONCILE_INTERVAL_SECONDS": "3600",
        "TASKS_METRICS_LISTEN_ADDR": "",
        **({"VERIFICATION_ADDR": verification.target} if verification else {}),
        # The domain's tests; authentication has its own (tests/integration/auth).
        "AUTH_ENABLED": "false",
        **overrides,
    }
    # Port 0 (any free port) is for tests only, so it bypasses the config check.
    settings = dataclasses.replace(
        load_settings(TasksSettings, env=env), tasks_listen_addr="127.0.0.1:0"
    )
    service = build_service(settings)
    running = await start_server(service.spec)
    channel = create_channel(f"127.0.0.1:{running.port}")
    return Harness(
        backend,
        service,
        running,
        channel,
        tasks_pb2_grpc.TaskServiceStub(channel),
        standin,
        database_url,
        cleanups,
        verification,
    )


@contextlib.asynccontextmanager
async def fresh_database(backend: str, server_url: str | None, tmp: Path) -> AsyncIterator[str]:
    """A new empty database: its own PostgreSQL database, or a new SQLite file."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'tasks-{uuid.uuid4().hex[:8]}.db'}"
        return
    assert server_url is not None
    with servers.postgres_database(server_url, prefix="verifier_tasks") as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
async def harness(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    verification: Verification,
) -> AsyncIterator[Harness]:
    """The tasks service on each backend, shared by a module's tests (each test
    makes its own tasks, with its own app_id when it lists)."""
    backend: str = request.param
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('tasks-sqlite') / 'tasks.db'}"
    running = await start_harness(backend, url, verification=verification)
    yield running
    await running.close()


@pytest.fixture
def app_id() -> str:
    """An app id of this test's own, so list filters see only its tasks."""
    return uuid.uuid4().hex[:12]  # hex: phala_cloud fetches by a hex app id


def create_request(app_id: str = "a1", **fields: object) -> tasks_pb2.CreateTaskRequest:
    request = tasks_pb2.CreateTaskRequest(
        app_id=app_id,
        app_name="demo",
        app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
        model_or_domain="demo.phala.network",
    )
    for name, value in fields.items():
        if hasattr(value, "DESCRIPTOR"):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def passing_summary(**fields: object) -> verification_pb2.ReportSummary:
    """A summary whose verdict and every default-enabled check passed."""
    summary = verification_pb2.ReportSummary(
        verdict=verification_pb2.VERDICT_PASSED,
        tcb_status="UpToDate",
        s3_bucket="verification-results",
        s3_key="reports/x.json",
        s3_filename="x.json",
    )
    for check in ("HARDWARE", "OS", "SOURCE_CODE", "TEE_CONTROLLED_KEY", "CERTIFICATE_KEY"):
        summary.checks.add(
            check=verification_pb2.Check.Value(f"CHECK_{check}"),
            status=verification_pb2.CHECK_STATUS_PASSED,
            reason="ok",
        )
    for check in ("DNS_CAA", "CT_LOG"):
        summary.checks.add(
            check=verification_pb2.Check.Value(f"CHECK_{check}"),
            status=verification_pb2.CHECK_STATUS_SKIPPED,
            reason="not enabled",
        )
    for name, value in fields.items():
        setattr(summary, name, value)
    return summary


async def wait_for_status(
    stub: tasks_pb2_grpc.TaskServiceStub, task_id: str, status: int, deadline_seconds: float = 20.0
) -> tasks_pb2.Task:
    """Follow WatchTask until the task reaches `status` (event-driven, no polling)."""
    call = stub.WatchTask(tasks_pb2.WatchTaskRequest(id=task_id), timeout=deadline_seconds)
    try:
        async for message in call:
            if message.task.status == status:
                return message.task
    finally:
        call.cancel()
    raise AssertionError(f"task {task_id} ended without reaching status {status}")


@pytest.fixture
def h(harness: Harness) -> Harness:
    """Short name for the module's harness in test bodies."""
    return harness


# --- the worker path, as a worker drives it ---------------------------------------


async def start_tasks(h: Harness, *task_ids: str, worker_id: str = "w") -> list[int]:
    """StartTasks; the attempt of each (0 when it was not started)."""
    response = await h.worker.StartTasks(
        worker_pb2.StartTasksRequest(worker_id=worker_id, task_ids=list(task_ids))
    )
    return [t.attempt for t in response.tasks]


def _lease(task_id: str, attempt: int) -> worker_pb2.TaskAttempt:
    return worker_pb2.TaskAttempt(task_id=task_id, attempt=attempt)


async def complete_task(
    h: Harness,
    task_id: str,
    attempt: int = 1,
    summary: verification_pb2.ReportSummary | None = None,
) -> int:
    """CompleteTasks with the summary as the engine signs it; the item's status code."""
    assert h.verification is not None, "start the harness with the verification fixture"
    signed = h.verification.sign(summary or passing_summary(), task_id, attempt)
    response = await h.worker.CompleteTasks(
        worker_pb2.CompleteTasksRequest(
            worker_id="w",
            tasks=[worker_pb2.TaskCompletion(task=_lease(task_id, attempt), signed_summary=signed)],
        )
    )
    return response.acks[0].status.code


async def fail_task(h: Harness, task_id: str, attempt: int = 1, error: str = "x") -> int:
    """FailTasks for the task's own fault; the item's status code."""
    response = await h.worker.FailTasks(
        worker_pb2.FailTasksRequest(
            worker_id="w",
            tasks=[worker_pb2.TaskFailure(task=_lease(task_id, attempt), error_message=error)],
        )
    )
    return response.acks[0].status.code


async def app_latest_failed(h: Harness) -> tasks_pb2.Task:
    """A new app's latest task (made by TriggerSchedule), started and FAILED:
    retention never removes it."""
    apps = apps_pb2_grpc.AppServiceStub(h.channel)
    app = (
        await apps.CreateApp(
            apps_pb2.CreateAppRequest(
                app=apps_pb2.App(
                    id=uuid.uuid4().hex,
                    app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
                )
            )
        )
    ).app
    latest = (await apps.TriggerSchedule(apps_pb2.TriggerScheduleRequest(id=app.id))).task
    [attempt] = await start_tasks(h, latest.id)
    assert await fail_task(h, latest.id, attempt) == 0
    return latest


async def report_progress(
    h: Harness, task_id: str, attempt: int, progress: int, message: str = ""
) -> int:
    response = await h.worker.ReportProgress(
        worker_pb2.ReportProgressRequest(
            progress=[
                worker_pb2.TaskProgress(
                    task=_lease(task_id, attempt), progress=progress, message=message
                )
            ]
        )
    )
    return response.acks[0].status.code
