"""The shared gRPC bootstrap over real sockets: error mapping, request ids
across services, health driven by probes, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from verifier.ops.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from verifier.queue.v1 import queue_pb2, queue_pb2_grpc
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared import errors, grpc_server
from shared.context import current_request_id
from shared.grpc_client import create_channel
from shared.grpc_server import DependencyProbe, RunningServer, ServiceSpec, start_server

QUEUE_SERVICE = "verifier.queue.v1.QueueService"


class EchoQueue(queue_pb2_grpc.QueueServiceServicer):
    """A test servicer of the bootstrap: EnqueueTask echoes the request id it sees,
    forwarding to `downstream` first when one is set; "slow" sleeps."""

    def __init__(self, downstream: str | None = None) -> None:
        self.downstream = downstream
        self.seen: list[str] = []

    async def EnqueueTask(
        self, request: queue_pb2.EnqueueTaskRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.EnqueueTaskResponse:
        if not request.task_id:
            raise errors.InvalidArgument("task_id", "is required")
        if request.task_id == "missing":
            raise errors.NotFound("task missing not found")
        if request.task_id == "boom":
            raise RuntimeError("secret internals")
        if request.task_id == "slow":
            await asyncio.sleep(0.5)
        self.seen.append(current_request_id())
        if self.downstream:
            async with create_channel(self.downstream) as channel:
                await queue_pb2_grpc.QueueServiceStub(channel).EnqueueTask(request)
        return queue_pb2.EnqueueTaskResponse(job_id=current_request_id())


async def _start(servicer: EchoQueue, probes: list[DependencyProbe] | None = None) -> RunningServer:
    return await start_server(
        ServiceSpec(
            name="echo",
            service_names=[QUEUE_SERVICE],
            register=lambda server: queue_pb2_grpc.add_QueueServiceServicer_to_server(
                servicer, server
            ),
            listen_addr="127.0.0.1:0",
            probes=probes or [],
            health_probe_interval_seconds=0.05,
            shutdown_grace_seconds=2.0,
        )
    )


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoQueue, RunningServer]]:
    servicer = EchoQueue()
    running = await _start(servicer)
    yield servicer, running
    await running.stop(0.1)


async def test_domain_error_maps_to_status_with_field_violation(
    echo: tuple[EchoQueue, RunningServer],
) -> None:
    _, running = echo
    async with create_channel(f"127.0.0.1:{running.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await queue_pb2_grpc.QueueServiceStub(channel).EnqueueTask(
                queue_pb2.EnqueueTaskRequest()
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_id" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "task_id"
    assert trailers["x-request-id"]


async def test_not_found_and_unexpected_errors(echo: tuple[EchoQueue, RunningServer]) -> None:
    _, running = echo
    async with create_channel(f"127.0.0.1:{running.port}") as channel:
        stub = queue_pb2_grpc.QueueServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id="missing"))
        with pytest.raises(grpc.aio.AioRpcError) as boom:
            await stub.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id="boom"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert boom.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in (boom.value.details() or "")


async def test_request_id_travels_across_services() -> None:
    downstream = EchoQueue()
    downstream_server = await _start(downstream)
    upstream = EchoQueue(downstream=f"127.0.0.1:{downstream_server.port}")
    upstream_server = await _start(upstream)
    try:
        async with create_channel(f"127.0.0.1:{upstream_server.port}") as channel:
            call = queue_pb2_grpc.QueueServiceStub(channel).EnqueueTask(
                queue_pb2.EnqueueTaskRequest(task_id="t1"),
                metadata=(("x-request-id", "req-abc-123"),),
            )
            response = await call
            trailers = dict(await call.trailing_metadata() or ())
        assert response.job_id == "req-abc-123"
        assert upstream.seen == ["req-abc-123"]
        assert downstream.seen == ["req-abc-123"]
        assert trailers["x-request-id"] == "req-abc-123"
    finally:
        await upstream_server.stop(0.1)
        await downstream_server.stop(0.1)


async def test_a_malformed_request_id_is_replaced() -> None:
    servicer = EchoQueue()
    running = await _start(servicer)
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            response = await queue_pb2_grpc.QueueServiceStub(channel).EnqueueTask(
                queue_pb2.EnqueueTaskRequest(task_id="t"),
                metadata=(("x-request-id", "bad id <script> " + "x" * 300),),
            )
        assert response.job_id
        assert " " not in response.job_id and "<" not in response.job_id
        assert len(response.job_id) <= 128
    finally:
        await running.stop(0.1)


async def test_health_follows_required_probes_and_diagnostics_report_them() -> None:
    state = {"up": False}

    async def database() -> str:
        if not state["up"]:
            raise ConnectionError("connection refused")
        return "15.4"

    async def optional_peer() -> str:
        raise ConnectionError("down")

    running = await _start(
        EchoQueue(),
        probes=[
            DependencyProbe("postgresql", database),
            DependencyProbe("peer", optional_peer, required=False),
        ],
    )
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=QUEUE_SERVICE))
                return int(reply.status)

            await asyncio.sleep(0.2)
            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            state["up"] = True
            for _ in range(50):
                if await status() == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.05)
            assert await status() == health_pb2.HealthCheckResponse.SERVING

            report = await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).CheckDependencies(
                diagnostics_pb2.CheckDependenciesRequest()
            )
        by_name = {d.name: d for d in report.dependencies}
        assert by_name["postgresql"].state == diagnostics_pb2.DEPENDENCY_STATE_UP
        assert by_name["postgresql"].version == "15.4"
        assert by_name["peer"].state == diagnostics_pb2.DEPENDENCY_STATE_DOWN
        assert "refused" not in by_name["peer"].message and "down" in by_name["peer"].message
        assert not by_name["peer"].required
    finally:
        await running.stop(0.1)


async def test_reflection_lists_service_health_and_reflection(
    echo: tuple[EchoQueue, RunningServer],
) -> None:
    _, running = echo
    async with create_channel(f"127.0.0.1:{running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for reply in stub.ServerReflectionInfo(requests()):
            names = {s.name for s in reply.list_services_response.service}
    assert {
        QUEUE_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "verifier.ops.v1.DiagnosticsService",
    } <= names


async def test_graceful_stop_lets_in_flight_calls_finish() -> None:
    running = await _start(EchoQueue())
    async with create_channel(f"127.0.0.1:{running.port}") as channel:
        stub = queue_pb2_grpc.QueueServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.EnqueueTask(queue_pb2.EnqueueTaskRequest(task_id="slow"))
        )
        await asyncio.sleep(0.1)
        await running.stop(2.0)
        response = await in_flight
    assert response.job_id


class FlakyTasks(tasks_pb2_grpc.TaskServiceServicer):
    """GetTask answers UNAVAILABLE `failures` times before it answers; CancelTask
    always answers UNAVAILABLE. Counts the calls that reach the server."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {"GetTask": 0, "CancelTask": 0}

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTaskResponse:
        self.calls["GetTask"] += 1
        if self.calls["GetTask"] <= self.failures:
            raise errors.Unavailable("database restarting")
        return tasks_pb2.GetTaskResponse(task=tasks_pb2.Task(id=request.id))

    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CancelTaskResponse:
        self.calls["CancelTask"] += 1
        raise errors.Unavailable("database restarting")


async def test_channel_retries_unavailable_for_idempotent_methods_only() -> None:
    servicer = FlakyTasks(failures=2)
    running = await start_server(
        ServiceSpec(
            name="flaky",
            service_names=["verifier.tasks.v1.TaskService"],
            register=lambda server: tasks_pb2_grpc.add_TaskServiceServicer_to_server(
                servicer, server
            ),
            listen_addr="127.0.0.1:0",
        )
    )
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            stub = tasks_pb2_grpc.TaskServiceStub(channel)
            response = await stub.GetTask(tasks_pb2.GetTaskRequest(id="t1"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as cancel:
                await stub.CancelTask(tasks_pb2.CancelTaskRequest(id="t1"), timeout=10)
    finally:
        await running.stop(0.1)
    assert response.task.id == "t1"
    assert servicer.calls["GetTask"] == 3  # two UNAVAILABLE answers retried by the channel
    assert cancel.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["CancelTask"] == 1  # not idempotent: not sent again


async def test_a_crashed_background_job_is_restarted() -> None:
    runs: list[int] = []
    restarted = asyncio.Event()

    async def job() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("bug in a loop")
        restarted.set()
        await asyncio.Event().wait()  # runs until the server stops

    running = await start_server(
        ServiceSpec(
            name="crashy",
            service_names=[QUEUE_SERVICE],
            register=lambda server: queue_pb2_grpc.add_QueueServiceServicer_to_server(
                EchoQueue(), server
            ),
            listen_addr="127.0.0.1:0",
            background=[job],
        )
    )
    try:
        await asyncio.wait_for(restarted.wait(), timeout=10)
    finally:
        await running.stop(0.1)
    assert len(runs) == 2


async def test_stop_ends_in_bounded_time_when_a_job_and_a_hook_ignore_their_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A background job stuck in a call that outlives its cancel (a store that
    does not answer) and a hook that never returns cost STOP_STEP_SECONDS each,
    not a hung process."""
    monkeypatch.setattr(grpc_server, "STOP_STEP_SECONDS", 0.5)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows the cancel, as a retried store call does

    async def never_returns() -> None:
        await asyncio.Event().wait()

    running = await start_server(
        ServiceSpec(
            name="stubborn",
            service_names=[QUEUE_SERVICE],
            register=lambda server: queue_pb2_grpc.add_QueueServiceServicer_to_server(
                EchoQueue(), server
            ),
            listen_addr="127.0.0.1:0",
            background=[stubborn],
            on_stop=[never_returns],
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=10)
        loop = asyncio.get_running_loop()
        begun = loop.time()
        await asyncio.wait_for(running.stop(0.1), timeout=20)
        assert loop.time() - begun < 10
    finally:
        release.set()  # let the stubborn job end, so it leaks nothing
