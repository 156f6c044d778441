"""Server-streaming RPCs through the shared interceptor: both shapes a handler
may take (an async generator, or a coroutine that writes with context.write,
as the health service's Watch does)."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.grpc_client import create_channel
from shared.grpc_server import ServiceSpec, start_server

pytestmark = pytest.mark.integration


async def test_health_watch_streams_through_the_request_interceptor() -> None:
    spec = ServiceSpec(
        name="t", service_names=[], register=lambda _: None, listen_addr="127.0.0.1:0"
    )
    server = await start_server(spec)
    channel = create_channel(f"127.0.0.1:{server.port}")
    try:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        statuses = []
        async for reply in call:
            statuses.append(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
        assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await server.stop(grace=0)
