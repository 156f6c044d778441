# ruff: noqa: E501  (the tables of RPCs read best one case a line)
"""Who may do what, against the real services with authentication on: every
external RPC without a key, with a wrong scope and with the right one; a
submitter sees only its owner's tasks; internal RPCs only for the project's
services by mutual TLS; rate limits; the gateway's 401/403/415/429."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import (
    apps_pb2,
    apps_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from verifier.verification.v1 import (
    engine_pb2,
    engine_pb2_grpc,
    os_images_pb2,
    os_images_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)

from shared.auth import POLICY, SERVICE_POLICY, rule_for
from shared.grpc_client import create_channel
from shared.principal import SCOPE_ADMIN, SCOPE_QUEUE, SCOPE_READ, SCOPE_SUBMIT
from shared.security import internal_channel
from shared.tls import CertPaths, channel_credentials, issue
from tests.integration.auth.conftest import CREATE_BURST, MakeKey
from tests.integration.gateway.stack import Stack
from tests.support.vectors import dstack_create_task_json

pytestmark = pytest.mark.integration

DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _addr(stack: Stack, service: str) -> str:
    return f"127.0.0.1:{stack.servers[service].port}"


def _task_request() -> tasks_pb2.CreateTaskRequest:
    return json_format.ParseDict(dstack_create_task_json(), tasks_pb2.CreateTaskRequest())


# Every external RPC: (service, stub, method, a request, a scope that may call it,
# a scope that may not).
EXTERNAL: list[tuple[str, Any, str, Message, str, str]] = [
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "CreateTask", _task_request(), SCOPE_SUBMIT, SCOPE_READ),
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "GetTask", tasks_pb2.GetTaskRequest(id=str(uuid.uuid4())), SCOPE_READ, SCOPE_QUEUE),
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "ListTasks", tasks_pb2.ListTasksRequest(), SCOPE_SUBMIT, SCOPE_QUEUE),
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "CancelTask", tasks_pb2.CancelTaskRequest(id=str(uuid.uuid4())), SCOPE_SUBMIT, SCOPE_READ),
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "GetTaskStats", tasks_pb2.GetTaskStatsRequest(), SCOPE_READ, SCOPE_SUBMIT),
    ("tasks", tasks_pb2_grpc.TaskServiceStub, "ListTaskEvents", tasks_pb2.ListTaskEventsRequest(id=str(uuid.uuid4())), SCOPE_READ, SCOPE_QUEUE),
    ("tasks", identity_pb2_grpc.ApiKeyServiceStub, "ListApiKeys", identity_pb2.ListApiKeysRequest(), SCOPE_ADMIN, SCOPE_READ),
    ("tasks", identity_pb2_grpc.ApiKeyServiceStub, "CreateApiKey", identity_pb2.CreateApiKeyRequest(name="made-by-test", scopes=[SCOPE_READ]), SCOPE_ADMIN, SCOPE_SUBMIT),
    ("tasks", identity_pb2_grpc.ApiKeyServiceStub, "RevokeApiKey", identity_pb2.RevokeApiKeyRequest(id="0" * 16), SCOPE_ADMIN, SCOPE_QUEUE),
    ("queue", queue_pb2_grpc.QueueServiceStub, "GetQueueStatus", queue_pb2.GetQueueStatusRequest(), SCOPE_QUEUE, SCOPE_SUBMIT),
    ("queue", queue_pb2_grpc.QueueServiceStub, "ListWorkers", queue_pb2.ListWorkersRequest(), SCOPE_QUEUE, SCOPE_READ),
    ("queue", queue_pb2_grpc.QueueServiceStub, "ResumeQueue", queue_pb2.ResumeQueueRequest(), SCOPE_QUEUE, SCOPE_READ),
    ("queue", queue_pb2_grpc.QueueServiceStub, "ListJobs", queue_pb2.ListJobsRequest(state=queue_pb2.JOB_STATE_WAITING), SCOPE_QUEUE, SCOPE_READ),
    ("queue", queue_pb2_grpc.QueueServiceStub, "DiscardJob", queue_pb2.DiscardJobRequest(id=str(uuid.uuid4())), SCOPE_QUEUE, SCOPE_READ),
    ("queue", queue_pb2_grpc.QueueServiceStub, "PromoteJob", queue_pb2.PromoteJobRequest(id=uuid.uuid4().hex), SCOPE_QUEUE, SCOPE_SUBMIT),
    ("verification", verification_pb2_grpc.VerificationServiceStub, "GetReport", verification_pb2.GetReportRequest(task_id=str(uuid.uuid4())), SCOPE_READ, SCOPE_QUEUE),
    ("verification", os_images_pb2_grpc.OsImageServiceStub, "DeleteOsImage", os_images_pb2.DeleteOsImageRequest(os_image_hash="0" * 64), SCOPE_ADMIN, SCOPE_READ),
    ("tasks", apps_pb2_grpc.AppServiceStub, "ListApps", apps_pb2.ListAppsRequest(), SCOPE_READ, SCOPE_SUBMIT),
    ("tasks", apps_pb2_grpc.AppServiceStub, "DeleteApp", apps_pb2.DeleteAppRequest(id="00" * 20), SCOPE_ADMIN, SCOPE_QUEUE),
]  # fmt: skip


async def _code(
    stack: Stack, case: tuple[str, Any, str, Message, str, str], key: str
) -> grpc.StatusCode:
    service, stub_class, method, request, _, _ = case
    async with create_channel(_addr(stack, service), api_key=key) as channel:
        try:
            await getattr(stub_class(channel), method)(request, timeout=20)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("case", EXTERNAL, ids=[c[2] for c in EXTERNAL])
async def test_external_rpc_wants_a_key_with_its_scope(
    auth_stack: Stack, make_key: MakeKey, case: tuple[str, Any, str, Message, str, str]
) -> None:
    _, _, method, _, right, wrong = case
    assert await _code(auth_stack, case, "") == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(auth_stack, case, "vk_not-a-key") == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(auth_stack, case, await make_key(wrong)) == grpc.StatusCode.PERMISSION_DENIED
    allowed = await _code(auth_stack, case, await make_key(right))
    assert allowed not in DENIED, f"{method} with {right}: {allowed}"


def test_every_rpc_of_every_service_has_an_access_rule() -> None:
    from verifier.tasks.v1 import identity_pb2 as identity

    from services.gateway.catalog import discover_services

    services = [*discover_services(), identity.DESCRIPTOR.services_by_name["IdentityService"]]
    for service in services:
        for method in service.methods:
            name = f"/{service.full_name}/{method.name}"
            assert rule_for(name) is not None, f"{name} has no rule in shared/auth.py"
    # A method the table does not know is refused, not open.
    assert rule_for("/verifier.tasks.v1.TaskService/SomethingNew") is None
    assert all(not rule.open or "Health" in m or "Signing" in m or "Jwks" in m or "Reflection" in m
               or "Diagnostics" in m for m, rule in {**POLICY, **SERVICE_POLICY}.items())  # fmt: skip


async def test_scheduled_tasks_are_the_schedulers_not_the_triggering_operators(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    """An operator's TriggerSchedule creates the scheduler's task (owner
    `scheduler`): a submitter key of that owner lists it, the operator's own
    submitter key and another owner's do not see it."""
    tasks_addr = _addr(auth_stack, "tasks")
    async with create_channel(tasks_addr, api_key=await make_key(SCOPE_ADMIN)) as channel:
        app = apps_pb2.App(
            id=uuid.uuid4().hex, app_config_type=verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD
        )
        await apps_pb2_grpc.AppServiceStub(channel).CreateApp(apps_pb2.CreateAppRequest(app=app))
    operator = await make_key(SCOPE_QUEUE, SCOPE_SUBMIT, owner="ops-person")
    async with create_channel(tasks_addr, api_key=operator) as channel:
        triggered = await apps_pb2_grpc.AppServiceStub(channel).TriggerSchedule(
            apps_pb2.TriggerScheduleRequest(id=app.id)
        )
        own = await tasks_pb2_grpc.TaskServiceStub(channel).ListTasks(
            tasks_pb2.ListTasksRequest(app_id=app.id)
        )
        assert [t.id for t in own.tasks] == []
    assert triggered.task.created_by == "scheduler"
    for owner, sees in (("scheduler", True), ("alice", False)):
        key = await make_key(SCOPE_SUBMIT, owner=owner)
        async with create_channel(tasks_addr, api_key=key) as channel:
            stub = tasks_pb2_grpc.TaskServiceStub(channel)
            listed = await stub.ListTasks(tasks_pb2.ListTasksRequest(app_id=app.id))
            assert ([t.id for t in listed.tasks] == [triggered.task.id]) is sees, owner


async def _wait_finished(tasks: Any, task_id: str) -> tasks_pb2.Task:
    for _ in range(300):
        task = (await tasks.GetTask(tasks_pb2.GetTaskRequest(id=task_id), timeout=10)).task
        if task.status in (tasks_pb2.TASK_STATUS_COMPLETED, tasks_pb2.TASK_STATUS_FAILED):
            return task
        await asyncio.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish")


async def test_a_submitter_sees_only_its_owner_tasks(auth_stack: Stack, make_key: MakeKey) -> None:
    alice = await make_key(SCOPE_SUBMIT, owner="alice")
    alice_again = await make_key(SCOPE_SUBMIT, owner="alice")  # another key, same owner
    bob = await make_key(SCOPE_SUBMIT, owner="bob")
    reader = await make_key(SCOPE_READ)
    tasks_addr = _addr(auth_stack, "tasks")
    async with (
        create_channel(tasks_addr, api_key=alice) as a_channel,
        create_channel(tasks_addr, api_key=bob) as b_channel,
        create_channel(tasks_addr, api_key=alice_again) as a2_channel,
        create_channel(tasks_addr, api_key=reader) as r_channel,
    ):
        a_tasks = tasks_pb2_grpc.TaskServiceStub(a_channel)
        b_tasks = tasks_pb2_grpc.TaskServiceStub(b_channel)
        created = (await a_tasks.CreateTask(_task_request(), timeout=10)).task
        finished = await _wait_finished(a_tasks, created.id)
        assert finished.status == tasks_pb2.TASK_STATUS_COMPLETED

        # Bob: list, get, watch, events, cancel and report all say "no such task".
        listed = await b_tasks.ListTasks(tasks_pb2.ListTasksRequest(page_size=100), timeout=10)
        assert created.id not in {t.id for t in listed.tasks}
        for call in (
            b_tasks.GetTask(tasks_pb2.GetTaskRequest(id=created.id), timeout=10),
            b_tasks.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=created.id), timeout=10),
            b_tasks.CancelTask(tasks_pb2.CancelTaskRequest(id=created.id), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as watch_refused:
            async for _ in b_tasks.WatchTask(tasks_pb2.WatchTaskRequest(id=created.id), timeout=10):
                pass
        assert watch_refused.value.code() == grpc.StatusCode.NOT_FOUND

        # Alice's other key and a tasks.read key see it.
        a2_list = await tasks_pb2_grpc.TaskServiceStub(a2_channel).ListTasks(
            tasks_pb2.ListTasksRequest(page_size=100), timeout=10
        )
        assert created.id in {t.id for t in a2_list.tasks}
        assert all(t.id != "" for t in a2_list.tasks)
        r_get = await tasks_pb2_grpc.TaskServiceStub(r_channel).GetTask(
            tasks_pb2.GetTaskRequest(id=created.id), timeout=10
        )
        assert r_get.task.id == created.id

    verification_addr = _addr(auth_stack, "verification")
    request = verification_pb2.GetReportRequest(task_id=created.id)
    for key, expected in ((alice, None), (reader, None), (bob, grpc.StatusCode.NOT_FOUND)):
        async with create_channel(verification_addr, api_key=key) as channel:
            stub = verification_pb2_grpc.VerificationServiceStub(channel)
            if expected is None:
                report = await stub.GetReport(request, timeout=10)
                assert report.signature and report.s3_key == finished.s3_key
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetReport(request, timeout=10)
                assert refused.value.code() == expected


INTERNAL_CALLS: list[tuple[str, Any, str, Message]] = [
    ("tasks", worker_pb2_grpc.TaskWorkerServiceStub, "StartTasks", worker_pb2.StartTasksRequest(worker_id="w", task_ids=[str(uuid.uuid4())])),
    ("tasks", worker_pb2_grpc.TaskWorkerServiceStub, "FailTasks", worker_pb2.FailTasksRequest(worker_id="w")),
    ("tasks", worker_pb2_grpc.QueueStateServiceStub, "GetQueueState", worker_pb2.GetQueueStateRequest(queue_name="q")),
    ("tasks", identity_pb2_grpc.IdentityServiceStub, "ValidateApiKey", identity_pb2.ValidateApiKeyRequest(secret="vk_x")),
    ("queue", queue_pb2_grpc.QueueServiceStub, "EnqueueTask", queue_pb2.EnqueueTaskRequest(task_id=str(uuid.uuid4()))),
    ("verification", engine_pb2_grpc.VerificationEngineServiceStub, "Verify", verification_pb2.VerifyRequest(task_id=str(uuid.uuid4()))),
    ("verification", engine_pb2_grpc.VerificationEngineServiceStub, "DeleteReports", engine_pb2.DeleteReportsRequest(task_ids=[str(uuid.uuid4())])),
]  # fmt: skip


@pytest.mark.parametrize("case", INTERNAL_CALLS, ids=[c[2] for c in INTERNAL_CALLS])
async def test_internal_rpc_is_refused_to_anonymous_and_to_any_api_key(
    auth_stack: Stack, make_key: MakeKey, case: tuple[str, Any, str, Message]
) -> None:
    service, stub_class, method, request = case
    admin = await make_key(SCOPE_ADMIN)
    for key in ("", admin):
        async with create_channel(_addr(auth_stack, service), api_key=key) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await getattr(stub_class(channel), method)(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, key
            assert "internal" in (refused.value.details() or "")
    # The project's own service, by its certificate, gets past the check (the
    # answer is the handler's: NOT_FOUND for a task that does not exist, ...).
    async with internal_channel(auth_stack.settings.tasks, service, "queue") as channel:
        try:
            await getattr(stub_class(channel), method)(request, timeout=20)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() not in DENIED, exc
            assert exc.code() != grpc.StatusCode.UNAVAILABLE, exc


async def test_internal_port_refuses_a_peer_without_our_certificate(
    auth_stack: Stack, tmp_path: Any
) -> None:
    settings = auth_stack.settings.tasks
    target = settings.tasks_internal_addr
    request = worker_pb2.FailTasksRequest(worker_id="forger")
    ours = CertPaths.of(settings.effective_tls_dir, "queue")
    stranger = issue(tmp_path / "other-ca", "queue")  # same name, another CA
    attempts: list[Any] = [
        channel_credentials(ours, client_cert=False),  # TLS, no client certificate
        channel_credentials(  # a certificate our CA did not sign
            CertPaths(ours.ca, stranger.cert, stranger.key)
        ),
    ]
    for creds in attempts:
        async with create_channel(target, credentials=creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await worker_pb2_grpc.TaskWorkerServiceStub(channel).FailTasks(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused


async def test_create_burst_past_the_bucket_is_resource_exhausted_with_retry_after(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    key = await make_key(SCOPE_SUBMIT)
    codes: list[grpc.StatusCode] = []
    retry_after = ""
    async with create_channel(_addr(auth_stack, "tasks"), api_key=key) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        request = tasks_pb2.CreateTaskRequest(
            app_config_type=verification_pb2.APP_CONFIG_TYPE_REDPILL, model_or_domain="org/model"
        )
        for _ in range(CREATE_BURST + 3):
            try:
                await stub.CreateTask(request, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                retry_after = dict(exc.trailing_metadata() or ()).get("retry-after", retry_after)
    assert codes[:CREATE_BURST] == [grpc.StatusCode.OK] * CREATE_BURST, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[CREATE_BURST:], codes
    assert retry_after and int(retry_after) >= 1
    # Another key has its own bucket.
    async with create_channel(
        _addr(auth_stack, "tasks"), api_key=await make_key(SCOPE_SUBMIT)
    ) as channel:
        await tasks_pb2_grpc.TaskServiceStub(channel).CreateTask(request, timeout=10)


async def test_a_batch_create_draws_one_token_per_task_and_refusal_creates_nothing(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    # A batch is not a way around the create limit: BatchCreateTasks of
    # CREATE_BURST tasks drains the bucket, and the next batch is refused whole.
    key = await make_key(SCOPE_SUBMIT, owner=f"batch-{uuid.uuid4().hex[:8]}")
    task = tasks_pb2.CreateTaskRequest(
        app_config_type=verification_pb2.APP_CONFIG_TYPE_REDPILL, model_or_domain="org/model"
    )
    async with create_channel(_addr(auth_stack, "tasks"), api_key=key) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        made = await stub.BatchCreateTasks(
            tasks_pb2.BatchCreateTasksRequest(requests=[task] * CREATE_BURST), timeout=10
        )
        assert len(made.tasks) == CREATE_BURST
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            # Two tokens need 4 s of refill at CREATE_PER_SECOND: refused now.
            await stub.BatchCreateTasks(
                tasks_pb2.BatchCreateTasksRequest(requests=[task] * 2), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(refused.value.trailing_metadata() or ()).get("retry-after", "0")) >= 1
        listed = await stub.ListTasks(tasks_pb2.ListTasksRequest(page_size=50), timeout=10)
        assert {t.id for t in listed.tasks} == {t.id for t in made.tasks}


async def test_a_revoked_key_stops_working_in_every_service(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    admin = await make_key(SCOPE_ADMIN)
    async with create_channel(_addr(auth_stack, "tasks"), api_key=admin) as channel:
        keys = identity_pb2_grpc.ApiKeyServiceStub(channel)
        made = await keys.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(name="short-lived", scopes=[SCOPE_QUEUE]), timeout=10
        )
        assert made.secret.startswith("vk_") and made.key.prefix == made.secret[:10]
        listed = await keys.ListApiKeys(identity_pb2.ListApiKeysRequest(), timeout=10)
        assert made.key.id in {k.id for k in listed.keys}
        assert made.secret not in str(listed)  # the key is shown once, never again
        queue_addr = _addr(auth_stack, "queue")
        async with create_channel(queue_addr, api_key=made.secret) as q:
            await queue_pb2_grpc.QueueServiceStub(q).GetQueueStatus(
                queue_pb2.GetQueueStatusRequest(), timeout=10
            )
            await keys.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=made.key.id), timeout=10)
            # The queue cached the key for identity_cache_seconds (1 s here; 10 s by default).
            await asyncio.sleep(auth_stack.settings.tasks.identity_cache_seconds + 0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await queue_pb2_grpc.QueueServiceStub(q).GetQueueStatus(
                    queue_pb2.GetQueueStatusRequest(), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- through the gateway -----------------------------------------------------------------


async def test_gateway_passes_the_key_and_answers_401_403_with_their_headers(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    submitter = await make_key(SCOPE_SUBMIT)
    async with httpx.AsyncClient(base_url=auth_stack.base_url, timeout=20) as http:
        anonymous = await http.get("/api/v1/tasks")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.json()["status"] == "UNAUTHENTICATED"
        wrong = await http.post(
            "/api/v1/queue/pause", headers={"authorization": f"Bearer {submitter}"}
        )
        assert wrong.status_code == 403, wrong.text
        ok = await http.get("/api/v1/tasks", headers={"authorization": f"Bearer {submitter}"})
        assert ok.status_code == 200, ok.text
        # Open: health, the OpenAPI document and the signing key.
        for path in ("/health", "/openapi", "/api/v1/verifier/signing-key"):
            assert (await http.get(path)).status_code == 200, path


async def test_gateway_rate_limit_is_429_with_retry_after(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    headers = {"authorization": f"Bearer {await make_key(SCOPE_SUBMIT)}"}
    body = {"appConfigType": "redpill", "modelOrDomain": "org/model"}
    async with httpx.AsyncClient(base_url=auth_stack.base_url, timeout=20) as http:
        statuses = [
            (await http.post("/api/v1/tasks", json=body, headers=headers))
            for _ in range(CREATE_BURST + 2)
        ]
    assert [r.status_code for r in statuses[:CREATE_BURST]] == [200] * CREATE_BURST
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1


async def test_gateway_refuses_form_and_text_posts_with_415(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    headers = {"authorization": f"Bearer {await make_key(SCOPE_SUBMIT, SCOPE_QUEUE)}"}
    async with httpx.AsyncClient(base_url=auth_stack.base_url, timeout=20) as http:
        form = await http.post("/api/v1/tasks", data={"appConfigType": "redpill"}, headers=headers)
        assert form.status_code == 415, form.text
        text = await http.post(
            "/api/v1/tasks",
            content=b'{"appConfigType":"redpill","modelOrDomain":"org/model"}',
            headers={**headers, "content-type": "text/plain"},
        )
        assert text.status_code == 415
        pause = await http.post(
            "/api/v1/queue/pause", content=b"x=1",
            headers={**headers, "content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert pause.status_code == 415
        listed = await http.get("/api/v1/tasks", headers=headers)
        assert listed.status_code == 200


async def test_gateway_non_finite_numbers_are_400_naming_the_field(
    auth_stack: Stack, make_key: MakeKey
) -> None:
    headers = {
        "authorization": f"Bearer {await make_key(SCOPE_SUBMIT)}",
        "content-type": "application/json",
    }
    async with httpx.AsyncClient(base_url=auth_stack.base_url, timeout=20) as http:
        for raw, field in (
            (b'{"appConfigType":"redpill","modelOrDomain":"m/x","appMetadata":{"k":NaN}}', "appMetadata.k"),
            (b'{"appConfigType":"redpill","modelOrDomain":"m/x","appMetadata":{"k":[1,Infinity]}}', "appMetadata.k[1]"),
            (b'{"appConfigType":"redpill","modelOrDomain":"m/x","appMetadata":{"k":1e999}}', "appMetadata.k"),
        ):  # fmt: skip
            response = await http.post("/api/v1/tasks", content=raw, headers=headers)
            assert response.status_code == 400, response.text
            violations = response.json()["details"][0]["fieldViolations"]
            assert violations[0]["field"] == field


async def test_task_ids_are_canonical_on_every_route(auth_stack: Stack, make_key: MakeKey) -> None:
    headers = {"authorization": f"Bearer {await make_key(SCOPE_READ)}"}
    upper = str(uuid.uuid4()).upper()
    async with httpx.AsyncClient(base_url=auth_stack.base_url, timeout=20) as http:
        for path in (
            f"/api/v1/tasks/{upper}",
            f"/api/v1/tasks/{upper}/report",
            f"/api/v1/tasks/{upper}/events",
            "/api/v1/tasks/abc",
            "/api/v1/tasks/abc/report",
        ):
            response = await http.get(path, headers=headers)
            assert response.status_code == 400, (path, response.text)
        missing = await http.get(f"/api/v1/tasks/{uuid.uuid4()}/report", headers=headers)
        assert missing.status_code == 404
