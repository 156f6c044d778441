"""Retention deletes the reports in S3 (SeaweedFS over HTTP): each removed
task's reports, every attempt's, go through the verification service's
internal DeleteReports before its row; an app's latest task and the tasks the
policy keeps keep theirs; while the verification service is down, nothing is
removed (no row without its reports' deletion)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from verifier.tasks.v1 import (
    operations_pb2,
    operations_pb2_grpc,
    tasks_pb2,
)

from services.verification.report_store import S3ReportStore, report_key
from tests.integration.tasks.conftest import (
    Harness,
    Verification,
    app_latest_failed,
    create_request,
    fail_task,
    fresh_database,
    start_harness,
    start_tasks,
    start_verification,
    verification_settings,
)
from tests.support import servers

pytestmark = pytest.mark.integration

SIGNATURE = bytes(range(64))


@pytest.fixture
async def s3_verification(
    s3: servers.S3Server, tmp_path: Path
) -> AsyncIterator[tuple[Verification, S3ReportStore]]:
    """The verification service with its reports in a bucket of its own."""
    settings = verification_settings(
        tmp_path / "verification",
        s3_endpoint=s3.endpoint,
        s3_access_key_id=s3.access_key_id or "test",
        s3_secret_access_key=s3.secret_access_key or "test",
        s3_region=s3.region,
        s3_bucket=f"retention-{uuid.uuid4().hex[:10]}",
    )
    store = S3ReportStore(dataclasses.replace(settings.report_store, s3_create_bucket=True))
    verification = await start_verification(settings)
    try:
        yield verification, store
    finally:
        await verification.running.stop(0.5)


def reports_of(store: S3ReportStore, task_id: str) -> list[str]:
    page = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"reports/{task_id}/")
    return sorted(item["Key"] for item in page.get("Contents", []))


async def failed_with_reports(h: Harness, store: S3ReportStore, attempts: int = 2) -> str:
    """A FAILED task with a report in S3 for each of `attempts` attempts."""
    task = (await h.stub.CreateTask(create_request(uuid.uuid4().hex[:12]))).task
    [attempt] = await start_tasks(h, task.id)
    assert await fail_task(h, task.id, attempt, "evidence malformed") == 0
    for n in range(1, attempts + 1):
        store.create(report_key(task.id, n), b'{"verdict":"failed"}', SIGNATURE)
    return task.id


@contextlib.asynccontextmanager
async def retention_harness(
    postgres_server_url: str, tmp_path: Path, verification: Verification
) -> AsyncIterator[Harness]:
    """The tasks service on a fresh database, keeping one failed task, removing
    in batches of 2, its retention run only when asked (RunRetention)."""
    async with fresh_database("postgres", postgres_server_url, tmp_path / "db") as url:
        h = await start_harness(
            "postgres",
            url,
            verification=verification,
            SCHEDULER_ENABLED="false",
            RETENTION_FAILED_MAX_COUNT="1",
            RETENTION_FAILED_MAX_AGE_SECONDS="0",
            RETENTION_INTERVAL_SECONDS="3600",
            RETENTION_BATCH_SIZE="2",
        )
        try:
            yield h
        finally:
            await h.close()


async def app_latest_failed_with_report(h: Harness, store: S3ReportStore) -> tasks_pb2.Task:
    """An app's latest task, FAILED with one report: retention keeps it, with
    its report, though it is beyond the count."""
    latest = await app_latest_failed(h)
    store.create(report_key(latest.id, 1), b"{}", SIGNATURE)
    return latest


async def test_nothing_is_removed_while_the_verification_service_is_down(
    postgres_server_url: str,
    tmp_path: Path,
    s3_verification: tuple[Verification, S3ReportStore],
) -> None:
    verification, store = s3_verification
    async with retention_harness(postgres_server_url, tmp_path, verification) as h:
        ops = operations_pb2_grpc.TaskOperationsServiceStub(h.channel)
        await app_latest_failed_with_report(h, store)
        old = [await failed_with_reports(h, store) for _ in range(3)]
        await failed_with_reports(h, store, attempts=1)
        assert all(len(reports_of(store, task_id)) == 2 for task_id in old)

        # Verification down: nothing is removed, rows and reports stay.
        await verification.running.stop(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ops.RunRetention(operations_pb2.RunRetentionRequest())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        for task_id in old:
            await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))
            assert len(reports_of(store, task_id)) == 2


async def test_retention_removes_rows_after_their_reports(
    postgres_server_url: str,
    tmp_path: Path,
    s3_verification: tuple[Verification, S3ReportStore],
) -> None:
    verification, store = s3_verification
    async with retention_harness(postgres_server_url, tmp_path, verification) as h:
        ops = operations_pb2_grpc.TaskOperationsServiceStub(h.channel)
        latest = await app_latest_failed_with_report(h, store)
        old = [await failed_with_reports(h, store) for _ in range(3)]
        newest = await failed_with_reports(h, store, attempts=1)
        no_reports = (await h.stub.CreateTask(create_request("abcdef01"))).task
        [attempt] = await start_tasks(h, no_reports.id)
        assert await fail_task(h, no_reports.id, attempt) == 0  # newest: kept

        result = await ops.RunRetention(operations_pb2.RunRetentionRequest())
        # Beyond the newest 1 (no_reports): newest and the three old ones, in
        # batches of 2; never the app's latest.
        assert result.removed == 4
        for task_id in [*old, newest]:
            assert reports_of(store, task_id) == []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reports_of(store, latest.id) == [report_key(latest.id, 1)]
        await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=latest.id))
        await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=no_reports.id))
        audit = await ops.ListRetentionAudit(operations_pb2.ListRetentionAuditRequest())
        assert {r.task_id for r in audit.records} == {*old, newest}
        assert (await ops.RunRetention(operations_pb2.RunRetentionRequest())).removed == 0
