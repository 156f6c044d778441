"""Entry point of the tasks service.

python -m services.tasks [serve]   serve TaskService on TASKS_LISTEN_ADDR
python -m services.tasks migrate   apply the database migrations and exit
... --check-config                 print the effective configuration and exit
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc
from verifier.tasks.v1 import (
    apps_pb2_grpc,
    identity_pb2_grpc,
    operations_pb2_grpc,
    tasks_pb2_grpc,
    worker_pb2_grpc,
)

from shared import metrics
from shared.entrypoint import new_parser, run_main, serving
from shared.grpc_server import DependencyProbe, ServiceSpec
from shared.log import get_logger
from shared.security import internal_target, service_security
from shared.tls import channel_credentials

from . import migrate
from .apps_server import SERVICE_NAME as APPS_SERVICE_NAME
from .apps_server import AppServicer
from .apps_service import AppsApp
from .apps_store import AppStore
from .apps_sync import AppSync, PhalaCloudApps
from .dispatch import Dispatcher, GrpcQueueClient, QueueClient, Reconciler
from .feed import ChangeFeed, PostgresListener
from .identity_server import API_KEY_SERVICE, IDENTITY_SERVICE, ApiKeyServicer, IdentityServicer
from .keys_store import KeyStore
from .model import Task, TaskStatus
from .operations import RetentionPolicy, StatusRule
from .operations_server import SERVICE_NAME as OPERATIONS_SERVICE_NAME
from .operations_server import TaskOperationsServicer
from .operations_service import TaskOperations
from .ops_store import OpsStore
from .progress import ProgressBoard
from .scheduler import Scheduler
from .server import SERVICE_NAME, TaskServicer
from .service import TaskApp
from .settings import TasksSettings, database_url
from .signing import SigningKeys
from .store import TaskStore, open_store
from .store_sqlite import SqliteTaskStore
from .verification_client import ReportDeleter, SigningKeyClient
from .worker import WorkerApp
from .worker_server import (
    QUEUE_STATE_SERVICE_NAME,
    WORKER_SERVICE_NAME,
    QueueStateServicer,
    TaskWorkerServicer,
)

log = get_logger(__name__)


@dataclass
class TasksService:
    """The wired parts of one tasks service process (tests reach into these)."""

    spec: ServiceSpec
    app: TaskApp
    store: TaskStore
    feed: ChangeFeed
    dispatcher: Dispatcher
    reconciler: Reconciler
    queue: QueueClient
    apps: AppsApp
    scheduler: Scheduler
    operations: TaskOperations
    worker: WorkerApp
    keys: KeyStore


def apply_migrations(settings: TasksSettings) -> None:
    url = settings.effective_database_url
    migrate.upgrade(url)
    log.info("database.migrated", revision=migrate.current_revision(url))


def build_service(settings: TasksSettings, *, queue: QueueClient | None = None) -> TasksService:
    """Wire the store, change feed, dispatcher and servicer into a ServiceSpec."""
    url = settings.effective_database_url
    is_sqlite = url.startswith("sqlite")
    feed = ChangeFeed(needs_listener=not is_sqlite)
    store = open_store(
        url,
        pool_size=settings.database_pool_size,
        on_change=feed.publish if is_sqlite else None,
    )
    keys = KeyStore(url)
    security = service_security(settings, "tasks", lookup=keys.lookup)
    queue_creds: Any = channel_credentials(security.certs) if security is not None else None
    queue_client: QueueClient = queue or GrpcQueueClient(
        internal_target(settings, "queue"), settings.enqueue_timeout_seconds, queue_creds
    )
    dispatcher = Dispatcher(store, queue_client)
    reconciler = Reconciler(
        store,
        dispatcher,
        pending_after_seconds=settings.reconcile_after_seconds,
        stale_after_seconds=settings.requeue_stale_after_seconds,
        interval_seconds=settings.reconcile_interval_seconds,
    )
    progress = ProgressBoard(time.monotonic)
    app = TaskApp(store, dispatcher, feed, progress)
    app.on_finished = _count_finished
    keys_client = SigningKeyClient(
        internal_target(settings, "verification"), credentials=queue_creds
    )
    # Retention deletes the tasks' reports before their rows (internal RPC).
    reports = ReportDeleter(internal_target(settings, "verification"), credentials=queue_creds)
    worker = WorkerApp(
        store,
        SigningKeys(keys_client.fetch),
        feed,
        progress,
        max_deliveries=settings.job_max_deliveries,
        on_finished=metrics.task_finished,
    )
    # SQLite has one writer: the apps share the task store's connection.
    app_store = (
        AppStore(store.engine)
        if isinstance(store, SqliteTaskStore)
        else AppStore.open(database_url(url, "async"), pool_size=4)
    )
    scheduler = Scheduler(
        app_store,
        app.create_once,
        store.clock,
        interval_seconds=settings.scheduler_interval_seconds,
        batch_size=settings.scheduler_batch_size,
    )
    source = (
        PhalaCloudApps(settings.phala_cloud_api_url, settings.phala_cloud_api_key)
        if settings.phala_cloud_api_key
        else None
    )
    sync = AppSync(app_store, source, store.clock, settings.app_sync_interval_seconds)
    apps_app = AppsApp(app_store, store, scheduler, sync, store.clock)
    operations = TaskOperations(
        OpsStore(app_store.engine, on_change=feed.publish if is_sqlite else None),
        store,
        dispatcher,
        app_store,
        retention_policy(settings),
        store.clock,
        settings.retention_interval_seconds,
        reports.delete,
    )
    background = [dispatcher.run, reconciler.run]
    if settings.scheduler_enabled:
        background.append(scheduler.run)
    if source is not None:
        background.append(sync.run)
    if operations.policy.active():
        background.append(operations.run)
    if not is_sqlite:
        background.append(PostgresListener(url, feed).run)

    async def close_apps() -> None:
        if not isinstance(store, SqliteTaskStore):
            await app_store.close()

    def register(server: grpc.aio.Server) -> None:
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(app), server)
        worker_pb2_grpc.add_TaskWorkerServiceServicer_to_server(TaskWorkerServicer(worker), server)
        worker_pb2_grpc.add_QueueStateServiceServicer_to_server(QueueStateServicer(worker), server)
        apps_pb2_grpc.add_AppServiceServicer_to_server(AppServicer(apps_app), server)
        operations_pb2_grpc.add_TaskOperationsServiceServicer_to_server(
            TaskOperationsServicer(operations), server
        )

        validator = security.authorizer.validator if security is not None else None
        identity_pb2_grpc.add_ApiKeyServiceServicer_to_server(
            ApiKeyServicer(keys, validator), server
        )
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(keys), server)

    spec = ServiceSpec(
        name="tasks",
        service_names=[
            SERVICE_NAME,
            APPS_SERVICE_NAME,
            OPERATIONS_SERVICE_NAME,
            WORKER_SERVICE_NAME,
            QUEUE_STATE_SERVICE_NAME,
            API_KEY_SERVICE,
            IDENTITY_SERVICE,
        ],
        register=register,
        listen_addr=settings.tasks_listen_addr,
        probes=[
            DependencyProbe("database", store.version, required=True),
            DependencyProbe("queue", queue_client.version, required=False),
        ],
        background=background,
        on_stop=[
            close_apps,
            store.close,
            queue_client.close,
            keys_client.close,
            reports.close,
            keys.close,
        ],
        health_probe_interval_seconds=settings.health_probe_interval_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        metrics_listen_addr=settings.tasks_metrics_listen_addr,
        security=security,
    )
    return TasksService(
        spec,
        app,
        store,
        feed,
        dispatcher,
        reconciler,
        queue_client,
        apps_app,
        scheduler,
        operations,
        worker,
        keys,
    )


def retention_policy(settings: TasksSettings) -> RetentionPolicy:
    rules = tuple(
        StatusRule(
            status,
            getattr(settings, f"retention_{status.value}_max_age_seconds"),
            getattr(settings, f"retention_{status.value}_max_count"),
        )
        for status in (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELLED)
    )
    return RetentionPolicy(rules, settings.retention_batch_size)


def _count_finished(task: Task) -> None:
    seconds = (task.finished_at - task.created_at).total_seconds() if task.finished_at else None
    metrics.task_finished(task.status.value, task.verdict, seconds)


def serve_tasks(settings: TasksSettings, args: argparse.Namespace) -> int | None:
    if args.command == "migrate":
        apply_migrations(settings)
        return 0
    if settings.migrate_on_start:
        apply_migrations(settings)
    service = build_service(settings)
    log.info(
        "tasks.starting",
        database="sqlite" if settings.embedded_database else "postgresql",
        queue=settings.queue_addr,
    )
    return serving(lambda _: service.spec)(settings, args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["api-key"]:
        from . import keys_cli

        return keys_cli.main(argv[1:])
    parser = new_parser("python -m services.tasks", __doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate", "api-key"],
        help="default: serve; api-key: see `api-key --help`",
    )
    return run_main("tasks", TasksSettings, serve_tasks, argv, parser=parser)
