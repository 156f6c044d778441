"""The gRPC server metrics over a real socket: go-grpc-prometheus names, labels and
codes as the error mapping chose them, scraped from the service's own /metrics port."""

from __future__ import annotations

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

from shared import errors
from shared.grpc_client import create_channel
from shared.grpc_server import ServiceSpec, start_server

QUEUE_SERVICE = "verifier.queue.v1.QueueService"


class Failing(queue_pb2_grpc.QueueServiceServicer):
    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        if request.task_id == "missing":
            raise errors.NotFound("no such task")
        if request.task_id == "bad":
            raise errors.InvalidArgument("task_id", "is bad")
        return queue_pb2.EnqueueTaskResponse(job_id="j")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as client:
        return samples((await client.get(url)).text)


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def test_handled_total_counts_each_code_and_the_histogram_each_call() -> None:
    running = await start_server(
        ServiceSpec(
            name="metrics-test",
            service_names=[QUEUE_SERVICE],
            register=lambda s: queue_pb2_grpc.add_QueueServiceServicer_to_server(Failing(), s),
            listen_addr="127.0.0.1:0",
            metrics_listen_addr="127.0.0.1:0",
            health_probe_interval_seconds=60,
        )
    )
    try:
        assert running.metrics_port
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        labels = {"grpc_type": "unary", "grpc_service": QUEUE_SERVICE, "grpc_method": "EnqueueTask"}
        before = await scrape(url)
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            stub = queue_pb2_grpc.QueueServiceStub(channel)
            for _ in range(3):
                await stub.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id="ok"))
            for task_id, code in (
                ("missing", grpc.StatusCode.NOT_FOUND),
                ("bad", grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id=task_id))
                assert caught.value.code() == code
        after = await scrape(url)

        def delta(name: str, **extra: str) -> float:
            return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

        assert delta("grpc_server_handled_total", grpc_code="OK") == 3
        assert delta("grpc_server_handled_total", grpc_code="NOT_FOUND") == 1
        assert delta("grpc_server_handled_total", grpc_code="INVALID_ARGUMENT") == 1
        assert delta("grpc_server_started_total") == 5
        assert delta("grpc_server_handling_seconds_count") == 5
        assert any(name == "process_cpu_seconds_total" for name, _ in after)
    finally:
        await running.stop(0.1)
