"""Every reference route through the gateway to the real services (tasks on
PostgreSQL, queue on Redis, verification on S3): the reference system's field
names and enum values, filters and paging in the query, errors as HTTP statuses,
request ids across services, live updates and the detailed health."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.gateway.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def client(gateway_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_stack.base_url, timeout=20) as http:
        yield http


def task_body(**overrides: Any) -> dict[str, Any]:
    """A create body in the reference system's shape."""
    body: dict[str, Any] = {
        "appId": uuid.uuid4().hex[:8],  # hex, as phala_cloud tasks need
        "appName": "demo",
        "appConfigType": "redpill",
        "contractAddress": "0x" + "ab" * 20,
        "modelOrDomain": "example.com",
        "appMetadata": {"team": "gateway-tests"},
        "verificationFlags": {"hardware": True, "dnsCAA": False},
    }
    body.update(overrides)
    return body


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/tasks", json=task_body(**overrides))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_create_returns_the_task_with_reference_names_and_values(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client, appConfigType="phala_cloud")
    uuid.UUID(task["id"])
    assert task["appConfigType"] == "phala_cloud"
    assert task["status"] in ("pending", "queued")
    assert task["jobName"] == "verify:phala_cloud"
    assert task["modelOrDomain"] == "example.com"
    assert task["appMetadata"] == {"team": "gateway-tests"}
    # The server fills the flags the client left unset with the defaults.
    assert task["verificationFlags"] == {
        "hardware": True,
        "os": True,
        "sourceCode": True,
        "teeControlledKey": True,
        "certificateKey": True,
        "dnsCAA": False,
        "ctLog": False,
    }
    assert task["createdAt"].endswith("Z")


async def test_get_returns_the_task_and_full_view_includes_evidence(
    client: httpx.AsyncClient,
) -> None:
    created = await create(client, evidence={"quote": "00ff", "eventLog": "[]"})
    fetched = await client.get(f"/api/v1/tasks/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["id"] == created["id"]
    assert fetched.json()["hasEvidence"] is True
    assert "evidence" not in fetched.json()
    full = await client.get(f"/api/v1/tasks/{created['id']}", params={"view": "full"})
    assert full.json()["evidence"]["quote"] == "00ff"


async def test_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"


async def test_malformed_task_id_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tasks/not-a-uuid")
    assert response.status_code == 400
    violations = response.json()["details"][0]["fieldViolations"]
    assert violations[0]["field"] == "id"


async def test_missing_app_config_type_is_400_from_the_service(client: httpx.AsyncClient) -> None:
    body = task_body()
    del body["appConfigType"]
    response = await client.post("/api/v1/tasks", json=body)
    assert response.status_code == 400
    assert response.json()["details"][0]["fieldViolations"][0]["field"] == "app_config_type"


async def test_batch_create_returns_the_tasks_in_order_and_names_a_bad_item(
    client: httpx.AsyncClient,
) -> None:
    bodies = [task_body(appName=f"batch-{n}") for n in range(3)]
    response = await client.post("/api/v1/tasks:batchCreate", json={"requests": bodies})
    assert response.status_code == 200, response.text
    tasks = response.json()["tasks"]
    assert [task["appName"] for task in tasks] == ["batch-0", "batch-1", "batch-2"]
    assert all(task["status"] in ("pending", "queued") for task in tasks)
    bad = [task_body(), task_body(contractAddress="0x1234")]
    refused = await client.post("/api/v1/tasks:batchCreate", json={"requests": bad})
    assert refused.status_code == 400, refused.text
    assert "requests[1].contract_address" in refused.text


async def test_unknown_enum_and_unknown_field_are_400_at_the_gateway(
    client: httpx.AsyncClient,
) -> None:
    bad_enum = await client.post("/api/v1/tasks", json=task_body(appConfigType="cloudy"))
    assert bad_enum.status_code == 400
    assert "phala_cloud" in bad_enum.json()["message"]
    unknown = await client.post("/api/v1/tasks", json=task_body(priority=5))
    assert unknown.status_code == 400
    assert unknown.json()["details"][0]["fieldViolations"][0]["field"] == "priority"


async def test_retried_create_with_request_id_returns_the_first_task(
    client: httpx.AsyncClient,
) -> None:
    key = f"retry-{uuid.uuid4().hex}"
    first = await create(client, requestId=key)
    second = await create(client, requestId=key)
    assert second["id"] == first["id"]


async def test_list_filters_by_app_type_and_status_from_the_query(
    client: httpx.AsyncClient,
) -> None:
    app_id = uuid.uuid4().hex[:10]  # hex: one of the tasks is phala_cloud
    redpill = await create(client, appId=app_id, appConfigType="redpill")
    cloud = await create(client, appId=app_id, appConfigType="phala_cloud")
    by_app = (await client.get("/api/v1/tasks", params={"appId": app_id})).json()
    assert {t["id"] for t in by_app["tasks"]} == {redpill["id"], cloud["id"]}
    by_type = await client.get(
        "/api/v1/tasks", params={"appId": app_id, "appConfigType": "phala_cloud"}
    )
    assert [t["id"] for t in by_type.json()["tasks"]] == [cloud["id"]]
    await client.delete(f"/api/v1/tasks/{redpill['id']}")
    cancelled = await client.get("/api/v1/tasks", params={"appId": app_id, "status": "cancelled"})
    assert [t["id"] for t in cancelled.json()["tasks"]] == [redpill["id"]]
    window = await client.get(
        "/api/v1/tasks",
        params={"appId": app_id, "createdAfter": "2100-01-01T00:00:00Z"},
    )
    assert window.json()["tasks"] == []


async def test_list_pages_with_opaque_tokens_newest_first(client: httpx.AsyncClient) -> None:
    app_id = f"paging-{uuid.uuid4().hex[:8]}"
    created = [await create(client, appId=app_id) for _ in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"appId": app_id, "pageSize": "2"}
        if token:
            params["pageToken"] = token
        page = (await client.get("/api/v1/tasks", params=params)).json()
        assert len(page["tasks"]) <= 2
        seen.extend(t["id"] for t in page["tasks"])
        pages += 1
        token = page["nextPageToken"]
        if not token:
            break
    assert pages == 3
    assert seen == [t["id"] for t in reversed(created)]


async def test_bad_page_size_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tasks", params={"pageSize": "lots"})
    assert response.status_code == 400
    assert response.json()["details"][0]["fieldViolations"][0]["field"] == "pageSize"


async def test_delete_cancels_and_repeating_it_is_a_no_op(client: httpx.AsyncClient) -> None:
    task = await create(client)
    cancelled = await client.delete(f"/api/v1/tasks/{task['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await client.delete(f"/api/v1/tasks/{task['id']}")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    missing = await client.delete(f"/api/v1/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_stats_summary_counts_are_numbers(client: httpx.AsyncClient) -> None:
    await create(client)
    stats = (await client.get("/api/v1/tasks/stats/summary")).json()
    assert isinstance(stats["total"], int) and stats["total"] >= 1
    assert set(stats) >= {"total", "pending", "queued", "active", "completed", "failed"}
    assert stats["total"] >= stats["cancelled"]


async def test_request_id_reaches_the_tasks_audit_trail(client: httpx.AsyncClient) -> None:
    request_id = f"gw-{uuid.uuid4().hex[:12]}"
    response = await client.post(
        "/api/v1/tasks", json=task_body(), headers={"X-Request-Id": request_id}
    )
    assert response.headers["x-request-id"] == request_id
    task_id = response.json()["id"]
    events = (await client.get(f"/api/v1/tasks/{task_id}/events")).json()["events"]
    created = [event for event in events if event["type"] == "created"]
    assert created and created[0]["requestId"] == request_id
    assert created[0]["toStatus"] == "pending"


async def test_queue_status_pause_resume_and_workers(
    client: httpx.AsyncClient, gateway_stack: Stack
) -> None:
    status = (await client.get("/api/v1/queue/status")).json()
    assert status["queueName"] == gateway_stack.settings.queue.queue_name
    assert status["backend"] == "redis"
    assert isinstance(status["waiting"], int)
    paused = await client.post("/api/v1/queue/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert (await client.get("/api/v1/queue/status")).json()["paused"] is True
    resumed = await client.post("/api/v1/queue/resume", json={})
    assert resumed.json()["paused"] is False
    workers = await client.get("/api/v1/queue/workers")
    assert workers.status_code == 200 and isinstance(workers.json()["workers"], list)


async def test_report_of_a_task_without_one_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/tasks/{uuid.uuid4()}/report")
    assert response.status_code == 404


async def test_signing_key_is_published(client: httpx.AsyncClient) -> None:
    key = (await client.get("/api/v1/verifier/signing-key")).json()
    assert key["algorithm"] == "Ed25519"
    assert len(key["publicKey"]) == 64 and key["publicKeyPem"].startswith("-----BEGIN")


async def test_watch_of_a_finished_task_sends_its_state_then_ends(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client)
    await client.delete(f"/api/v1/tasks/{task['id']}")
    response = await client.get(f"/api/v1/tasks/{task['id']}:watch")
    assert response.status_code == 200
    blocks = [block for block in response.text.split("\n\n") if block.strip()]
    # Each event carries its `id:` line (for Last-Event-ID), then its data.
    head, data = blocks[0].split("\n", 1)
    assert head.startswith("id: ")
    first = json.loads(data.removeprefix("data: "))
    assert first["task"]["id"] == task["id"] and first["task"]["status"] == "cancelled"
    assert blocks[-1].startswith("event: end")


async def test_watch_of_an_unknown_task_is_a_plain_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/v1/tasks/{uuid.uuid4()}:watch")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


async def test_watch_streams_each_state_change_live(client: httpx.AsyncClient) -> None:
    task = await create(client)
    statuses: list[str] = []
    async with client.stream("GET", f"/api/v1/tasks/{task['id']}:watch") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                statuses.append(json.loads(line[6:])["task"]["status"])
                if len(statuses) == 1:
                    # Change the task while the stream is open: it must arrive as an event.
                    await client.delete(f"/api/v1/tasks/{task['id']}")
            if line.startswith("event: end"):
                break
    assert statuses[0] in ("pending", "queued")
    assert statuses[-1] == "cancelled"


async def test_detailed_health_reports_services_and_their_stores(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/health/detailed")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert set(body["services"]) == {"tasks", "queue", "verification"}
    assert all(service["status"] == "SERVING" for service in body["services"].values())
    dependencies = body["dependencies"]
    assert {"redis", "s3"} <= set(dependencies)
    database = next(d for d in body["services"]["tasks"]["dependencies"] if d["required"])
    assert database["state"] == "up" and "PostgreSQL" in database["version"]
    assert dependencies["redis"]["state"] == "up" and dependencies["redis"]["latencyMs"] >= 0
    assert dependencies["redis"]["version"]
