"""Helpers for the gateway's HTTP tests: the gateway on a real socket (uvicorn in
the test's event loop), and the test-only ThingService on a real gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import uvicorn
from google.protobuf.descriptor import ServiceDescriptor

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import errors
from shared.config import load_settings
from shared.context import current_request_id
from shared.grpc_server import RunningServer, ServiceSpec, start_server
from tests.unit.gateway.things import compiled


def gateway_settings(**overrides: Any) -> GatewaySettings:
    base = load_settings(GatewaySettings, env={})
    return dataclasses.replace(base, host="127.0.0.1", port=0, **overrides)


@contextlib.asynccontextmanager
async def running_gateway(
    settings: GatewaySettings,
    *,
    services: Sequence[ServiceDescriptor] | None = None,
    targets: Mapping[str, str] | None = None,
    comments: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """The gateway app served by uvicorn on a free port; yields its base URL."""
    app = create_app(settings, services=services, targets=targets, comments=comments)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # The test runner owns the signals; uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        await task
        raise RuntimeError("the gateway did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class ThingServicer:
    """The test contract's servicer (generic handlers, as a service added later would be)."""

    def __init__(self) -> None:
        module, _ = compiled()
        self.pb = module
        self.cancelled_streams = 0
        self.streams_started = 0

    def _thing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        remaining = context.time_remaining()
        return self.pb.Thing(
            name=request.name,
            kind=request.kind,
            count=request.big,
            tags=list(request.tags),
            at=request.at if request.HasField("at") else None,
            inner=request.inner if request.HasField("inner") else None,
            kinds=list(request.kinds),
            dns_caa=request.flag,
            request_id=current_request_id(),
            deadline_seconds=remaining if remaining is not None else 0.0,
        )

    async def GetThing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._thing(request, context)

    async def CreateThing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        thing = self.pb.Thing()
        thing.CopyFrom(request.thing)
        thing.shelf_id = request.shelf.id
        thing.request_id = current_request_id()
        return self.pb.CreateThingResponse(thing=thing, created=True)

    async def WatchThing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.streams_started += 1
        try:
            if request.count > 0:
                for index in range(request.count):
                    yield self.pb.Thing(name=f"{request.name}-{index}", count=index)
                return
            # count 0: one message, then wait until the client goes away.
            yield self.pb.Thing(name=request.name)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_streams += 1
            raise

    async def Fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        name = request.name
        if name == "SLOW":
            await asyncio.sleep(10)
        if name == "CRASH":
            raise RuntimeError("secret internals")
        if name == "UNIMPLEMENTED":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not here")
        by_name: dict[str, errors.DomainError] = {
            "INVALID_ARGUMENT": errors.InvalidArgument("name", "is not acceptable"),
            "NOT_FOUND": errors.NotFound("thing x not found"),
            "ALREADY_EXISTS": errors.AlreadyExists("thing x exists"),
            "FAILED_PRECONDITION": errors.FailedPrecondition("thing x is finished"),
            "RESOURCE_EXHAUSTED": errors.ResourceExhausted("too many things"),
            "UNAVAILABLE": errors.Unavailable("the shelf is away"),
            "DEADLINE_EXCEEDED": errors.DeadlineExceeded("the shelf is slow"),
            "PERMISSION_DENIED": errors.PermissionDenied("not your thing"),
        }
        raise by_name.get(name, errors.InvalidArgument("name", f"unknown failure {name}"))

    async def Internal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._thing(request, context)


def _register(servicer: ThingServicer) -> Any:
    module, _ = compiled()
    service = module.DESCRIPTOR.services_by_name["ThingService"]

    def register(server: grpc.aio.Server) -> None:
        handlers = {}
        for method in service.methods:
            from google.protobuf import message_factory

            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            factory = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[method.name] = factory(
                getattr(servicer, method.name),
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )

    return register


@contextlib.asynccontextmanager
async def running_things() -> AsyncIterator[tuple[ThingServicer, RunningServer]]:
    servicer = ThingServicer()
    module, _ = compiled()
    running = await start_server(
        ServiceSpec(
            name="things",
            service_names=[module.DESCRIPTOR.services_by_name["ThingService"].full_name],
            register=_register(servicer),
            listen_addr="127.0.0.1:0",
            health_probe_interval_seconds=0.2,
            shutdown_grace_seconds=1.0,
        )
    )
    try:
        yield servicer, running
    finally:
        await running.stop(0.2)
