"""Every service's /metrics after a known run: the pipeline as processes (tasks,
verification, queue on Redis, one worker) and the gateway, three tasks through
the gateway's REST API (two pass, one fails its compose hash), then each endpoint
scraped and its names, labels and values checked against that run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from services.queue.broker import QueueKeys
from tests.fault.stack import PipelineStack, Process, pipeline_stack, stack_env
from tests.support import servers
from tests.support.auth import auth_env
from tests.support.gateway_process import start_gateway
from tests.support.vectors import dstack_create_task_json

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SERVICES = ("tasks", "queue", "verification", "worker", "gateway")


@dataclass
class MetricsStack:
    stack: PipelineStack
    gateway: str
    endpoints: dict[str, str]
    queue_name: str


@pytest.fixture(scope="module")
def mstack(
    postgres_server_url: str,
    redis_url: str,
    s3: servers.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MetricsStack]:
    ports = {name: servers.free_port() for name in SERVICES}
    queue_name = f"metrics-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("metrics")
    with servers.postgres_database(postgres_server_url, prefix="verifier_metrics") as database:
        env = stack_env(
            database_url=database,
            redis_url=redis_url,
            s3=s3,
            workdir=workdir,
            queue_name=queue_name,
            **{
                f"{name}_metrics_listen_addr": f"127.0.0.1:{ports[name]}"
                for name in ("tasks", "queue", "verification", "worker")
            },
        )
        with pipeline_stack(env, workers=1) as stack:
            gateway = start_gateway(stack.env, ports["gateway"], workdir / "gateway.log")
            base = f"http://127.0.0.1:{ports['gateway']}"
            try:
                endpoints = {
                    name: f"http://127.0.0.1:{ports[name]}/metrics"
                    for name in ("tasks", "queue", "verification", "worker")
                }
                endpoints["gateway"] = f"{base}/metrics"
                yield MetricsStack(stack, base, endpoints, queue_name)
            finally:
                gateway.stop()


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def unary(service: str, method: str, code: str = "OK") -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": service, "grpc_method": method, "grpc_code": code}


async def test_every_endpoint_reports_the_known_run(mstack: MetricsStack) -> None:
    auth = {"authorization": f"Bearer {mstack.stack.api_key}"}
    async with httpx.AsyncClient(base_url=mstack.gateway, timeout=30, headers=auth) as client:
        bodies = [
            dstack_create_task_json(),
            dstack_create_task_json(),
            dstack_create_task_json(expectedComposeHash="0" * 64),
        ]
        created = []
        for body in bodies:
            response = await client.post("/api/v1/tasks", json=body)
            assert response.status_code == 200, response.text
            created.append(response.json()["id"])
    tasks = await mstack.stack.wait_finished(created)
    assert [t.status for t in tasks] == [4, 4, 5]  # completed, completed, failed

    # --- tasks service: counted once per final status, durations observed
    scraped = scrape(mstack.endpoints["tasks"])
    assert value(scraped, "verifier_tasks_total", status="completed", verdict="passed") == 2
    assert value(scraped, "verifier_tasks_total", status="failed", verdict="failed") == 1
    assert value(scraped, "verifier_task_duration_seconds_count") == 3
    assert value(scraped, "verifier_task_duration_seconds_sum") > 0
    task_service = "verifier.tasks.v1.TaskService"
    assert value(scraped, "grpc_server_handled_total", **unary(task_service, "CreateTask")) == 3
    # The workers complete through the internal worker contract, a batch a call.
    worker_service = "verifier.tasks.v1.TaskWorkerService"
    completes = value(
        scraped, "grpc_server_handled_total", **unary(worker_service, "CompleteTasks")
    )
    assert 1 <= completes <= 3
    assert "grpc_server_handling_seconds_bucket" in names(scraped)
    assert "process_cpu_seconds_total" in names(scraped)

    # --- verification service: one count per check outcome
    scraped = scrape(mstack.endpoints["verification"])
    assert value(scraped, "verifier_verifications_total", check="hardware", status="passed") == 3
    assert value(scraped, "verifier_verifications_total", check="os", status="passed") == 3
    assert value(scraped, "verifier_verifications_total", check="source_code", status="passed") == 2
    assert value(scraped, "verifier_verifications_total", check="source_code", status="failed") == 1
    assert value(scraped, "verifier_verification_duration_seconds_count") == 3
    # The workers call the internal engine service (Verify, or VerifyTasks in batches).
    engine = "verifier.verification.v1.VerificationEngineService"
    engine_calls = sum(
        count
        for (name, labels), count in scraped.items()
        if name == "grpc_server_handled_total"
        and ("grpc_service", engine) in labels
        and ("grpc_code", "OK") in labels
    )
    assert 1 <= engine_calls <= 3

    # --- queue service: gauges refreshed from the backend
    deadline = time.monotonic() + 20
    while True:
        scraped = scrape(mstack.endpoints["queue"])
        queue = mstack.queue_name
        finished = value(scraped, "verifier_queue_jobs", queue=queue, state="completed") + value(
            scraped, "verifier_queue_jobs", queue=queue, state="failed"
        )
        # completed/failed are the tasks database's and count as soon as the
        # task is final; the worker acks its Redis jobs just after, so "active"
        # drains a refresh or two later. Wait for both.
        in_queue = sum(
            value(scraped, "verifier_queue_jobs", queue=queue, state=state)
            for state in ("waiting", "active", "delayed")
        )
        if (finished == 3 and in_queue == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert finished == 3
    for state in ("waiting", "active", "delayed"):
        assert (
            ("verifier_queue_jobs", frozenset({"queue": queue, "state": state}.items()))
        ) in scraped
        assert value(scraped, "verifier_queue_jobs", queue=queue, state=state) == 0
    assert value(scraped, "verifier_workers", state="online") == 1

    # completed/failed are the tasks database's (QueueStateService), not Redis
    # counters: with the queue's counters gone from Redis they still read 2 + 1.
    keys = QueueKeys(queue)
    client = redis.asyncio.from_url(mstack.stack.env["REDIS_URL"])
    try:
        await client.delete(keys.completed, keys.failed)
        await client.set(keys.completed, 40)  # a stale counter is not read either
    finally:
        await client.aclose()
    await asyncio.sleep(2.0)  # the gauges refresh every 0.5 s
    scraped = scrape(mstack.endpoints["queue"])
    assert value(scraped, "verifier_queue_jobs", queue=queue, state="completed") == 2
    assert value(scraped, "verifier_queue_jobs", queue=queue, state="failed") == 1

    # --- the worker process and the gateway
    assert "process_resident_memory_bytes" in names(scrape(mstack.endpoints["worker"]))
    scraped = scrape(mstack.endpoints["gateway"])
    assert value(scraped, "verifier_http_requests_total", method="POST", code="200") == 3
    assert value(scraped, "verifier_http_request_duration_seconds_count", method="POST") == 3
    assert "process_cpu_seconds_total" in names(scraped)


def test_metrics_off_serves_no_metrics_port(tmp_path_factory: pytest.TempPathFactory) -> None:
    """METRICS_ENABLED=false: the service runs, its metrics port stays closed."""
    port, metrics_port = servers.free_port(), servers.free_port()
    workdir = tmp_path_factory.mktemp("metrics-off")
    env = stack_env(
        database_url=f"sqlite:///{workdir / 'tasks.db'}",
        redis_url="",
        s3=None,
        workdir=workdir,
        queue_name="off",
        tasks_listen_addr=f"127.0.0.1:{port}",
        tasks_metrics_listen_addr=f"127.0.0.1:{metrics_port}",
        metrics_enabled="false",
    )
    env = auth_env(env, workdir)
    process = Process("tasks", ["-m", "services.tasks"], env, workdir / "tasks.log", port).start()
    try:
        process.wait_serving()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
    finally:
        process.stop()
