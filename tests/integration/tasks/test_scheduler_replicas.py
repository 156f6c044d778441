"""Two tasks-service replicas on one PostgreSQL database, both running their
scheduler every 20 ms while apps are registered: each app gets exactly one
scheduled task (the advisory lock lets one replica schedule at a time, and the
request id makes a repeated create return the first task)."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from verifier.tasks.v1 import apps_pb2, apps_pb2_grpc
from verifier.verification.v1 import verification_pb2

from tests.integration.tasks.conftest import start_harness, start_queue_standin
from tests.support import servers

APPS = 300


async def test_two_replicas_schedule_each_app_exactly_once(postgres_server_url: str) -> None:
    with servers.postgres_database(postgres_server_url, prefix="verifier_replicas") as url:
        queue = await start_queue_standin()
        fast = {"SCHEDULER_INTERVAL_SECONDS": "0.02", "SCHEDULER_BATCH_SIZE": "50"}
        replicas = [await start_harness("postgresql", url, queue=queue, **fast) for _ in range(2)]
        try:
            ids = [uuid.uuid4().hex for _ in range(APPS)]

            async def register(index: int, app_id: str) -> None:
                stub = apps_pb2_grpc.AppServiceStub(replicas[index % 2].channel)
                await stub.CreateApp(
                    apps_pb2.CreateAppRequest(
                        app=apps_pb2.App(
                            id=app_id,
                            app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
                        )
                    )
                )

            # Registered while both schedulers run, so passes overlap the inserts.
            gate = asyncio.Semaphore(16)

            async def limited(index: int, app_id: str) -> None:
                async with gate:
                    await register(index, app_id)

            await asyncio.gather(*(limited(i, app_id) for i, app_id in enumerate(ids)))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(await scheduled_counts(url, ids)) == APPS:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # ~50 more passes each: nothing new may appear
            counts = await scheduled_counts(url, ids)
            assert len(counts) == APPS, f"{APPS - len(counts)} apps never scheduled"
            assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
            schedulers = [replica.service.scheduler for replica in replicas]
            assert all(s.passes_run > 0 for s in schedulers), [s.passes_run for s in schedulers]
            # No two passes overlapped: none found a task another pass had just created.
            assert sum(s.created_total for s in schedulers) == APPS
            assert sum(s.recovered_total for s in schedulers) == 0
            # Each app's recorded latest task is its one scheduled task.
            async with await psycopg.AsyncConnection.connect(url) as conn:
                rows = await (
                    await conn.execute(
                        "SELECT count(*) FROM apps a JOIN tasks t ON t.id = a.latest_task_id "
                        "WHERE t.created_by = 'scheduler' AND a.id = ANY(%s)",
                        (ids,),
                    )
                ).fetchone()
            assert rows is not None and rows[0] == APPS
        finally:
            for replica in replicas:
                await replica.close()
            await queue[1].stop(0.1)


async def scheduled_counts(url: str, ids: list[str]) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT app_id, count(*) FROM tasks WHERE created_by = 'scheduler' "
            "AND app_id = ANY(%s) GROUP BY app_id",
            (ids,),
        )
        return {row[0]: int(row[1]) for row in await cursor.fetchall()}


pytestmark = pytest.mark.integration
