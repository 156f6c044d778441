"""Queue job actions over REST on the whole stack (tasks on PostgreSQL,
verification on S3, the queue on Redis with a worker, or embedded): the waiting
jobs listed, one discarded (its task CANCELLED through the tasks service with
an audit event, and retryable again afterwards), the FAILED jobs read from the
tasks database, and bad input answered 400 naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.gateway.stack import Stack, running_stack, stack_settings
from tests.support.servers import S3Server
from tests.support.vectors import dstack_create_task_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["redis", "embedded"])
async def jobs_stack(
    request: pytest.FixtureRequest,
    postgres_url: str,
    redis_url: str,
    s3: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    redis = redis_url if request.param == "redis" else ""
    settings = stack_settings(postgres_url, redis, tmp_path_factory.mktemp("jobs"), s3)
    async with running_stack(settings, with_worker=bool(redis)) as stack:
        yield stack


async def until(what: str, check: Any, within: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def waiting_ids(http: httpx.AsyncClient) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        response = await http.get(
            "/api/v1/queue/jobs", params={"state": "waiting", "pageSize": 1, "pageToken": token}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        ids.extend(job["taskId"] for job in body.get("jobs", []))
        token = body.get("nextPageToken", "")
        if not token:
            return ids


async def test_discard_cancels_the_task_and_failed_jobs_come_from_the_tasks(
    jobs_stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=jobs_stack.base_url, timeout=30) as http:
        assert (await http.post("/api/v1/queue/pause", json={})).status_code == 200
        await asyncio.sleep(1.5)  # the worker observes the pause
        ids = []
        for _ in range(2):
            created = await http.post("/api/v1/tasks", json=dstack_create_task_json())
            assert created.status_code == 200, created.text
            ids.append(created.json()["id"])

        async def both_waiting() -> bool:
            return set(ids) <= set(await waiting_ids(http))

        await until("both tasks' jobs to wait", both_waiting)
        found = (await http.get(f"/api/v1/queue/jobs/{ids[0]}")).json()
        assert (found["taskId"], found["state"]) == (ids[0], "waiting")
        by_job_id = (await http.get(f"/api/v1/queue/jobs/{found['id']}")).json()
        assert by_job_id == found

        discarded = await http.post(
            f"/api/v1/queue/jobs/{ids[0]}:discard", json={"reason": "operator test"}
        )
        assert discarded.status_code == 200, discarded.text
        assert discarded.json()["id"] == found["id"]
        task = (await http.get(f"/api/v1/tasks/{ids[0]}")).json()
        assert task["status"] == "cancelled"
        assert "discarded from the queue" in task["errorMessage"]
        events = (await http.get(f"/api/v1/tasks/{ids[0]}/events")).json()["events"]
        assert events[-1]["type"] == "cancelled"
        assert "operator test" in events[-1]["message"]
        assert ids[0] not in await waiting_ids(http)
        assert ids[1] in await waiting_ids(http)
        assert (await http.get(f"/api/v1/queue/jobs/{ids[0]}")).status_code == 404
        again = await http.post(f"/api/v1/queue/jobs/{ids[0]}:discard", json={})
        assert again.status_code == 404

        # Nothing was left half-written: retried, the task gets a job again.
        retried = await http.post(f"/api/v1/tasks/{ids[0]}:retry", json={})
        assert retried.status_code == 200, retried.text

        async def back() -> bool:
            return ids[0] in await waiting_ids(http)

        await until("the retried task's new job", back)

        # A task that fails is a FAILED job, read from the tasks database.
        failing = await http.post(
            "/api/v1/tasks", json=dstack_create_task_json(expectedComposeHash="0" * 64)
        )
        failed_id = failing.json()["id"]
        assert (await http.post("/api/v1/queue/resume", json={})).status_code == 200

        async def failed() -> bool:
            task = (await http.get(f"/api/v1/tasks/{failed_id}")).json()
            return bool(task["status"] == "failed")

        await until("the failing task to fail", failed, within=60)
        listed = (await http.get("/api/v1/queue/jobs", params={"state": "failed"})).json()
        assert failed_id in [job["taskId"] for job in listed["jobs"]]

        async def job_failed() -> Any:
            job = (await http.get(f"/api/v1/queue/jobs/{failed_id}")).json()
            return job if job["state"] == "failed" else None

        # The worker fails the task (FailTasks) and then settles its job: until
        # then the job is still in hand ("active").
        job = await until("the failed task's job to be settled", job_failed)
        assert job["finishedAt"]


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/api/v1/queue/jobs", {}, "state"),
        ("GET", "/api/v1/queue/jobs", {"state": "finished"}, "state"),
        ("GET", "/api/v1/queue/jobs", {"state": "waiting", "pageSize": 501}, "page"),
        ("GET", "/api/v1/queue/jobs", {"state": "waiting", "pageToken": "zz"}, "page"),
        ("GET", "/api/v1/queue/jobs/not%20an%20id", {}, "id"),
        ("POST", "/api/v1/queue/jobs/x:promote", {"reason": 1}, ""),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    jobs_stack: Stack, method: str, path: str, params: dict[str, Any], field: str
) -> None:
    async with httpx.AsyncClient(base_url=jobs_stack.base_url, timeout=30) as http:
        if method == "GET":
            response = await http.get(path, params=params)
        else:
            response = await http.post(path, json=params)
    assert response.status_code == 400, response.text
    assert field in response.text
