"""GET /health/detailed: each service's grpc.health state and, through its
DiagnosticsService, the state, latency and version of what it depends on
(PostgreSQL, Redis, S3, ...). Every service and every required dependency
must be up for 200; otherwise 503 with the same body saying what is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from verifier.ops.v1 import diagnostics_pb2, diagnostics_pb2_grpc

from services.gateway.rest_json import message_to_json


@dataclass(frozen=True)
class ServiceHealth:
    """What one service said (or that it did not answer)."""

    name: str
    target: str
    serving: bool
    state: str
    latency_ms: float
    diagnostics: dict[str, Any] | None
    message: str = ""

    @property
    def dependencies(self) -> list[dict[str, Any]]:
        return list((self.diagnostics or {}).get("dependencies", []))

    @property
    def healthy(self) -> bool:
        """Serving, and no required dependency down."""
        return self.serving and not any(
            dep.get("required") and dep.get("state") != "up" for dep in self.dependencies
        )

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "target": self.target,
            "status": self.state,
            "healthy": self.healthy,
            "latencyMs": self.latency_ms,
            "version": (self.diagnostics or {}).get("version", ""),
            "dependencies": self.dependencies,
        }
        if self.message:
            body["message"] = self.message
        return body


async def check_service(
    name: str, target: str, channel: grpc.aio.Channel, wait_seconds: float, request_id: str
) -> ServiceHealth:
    metadata = (("x-request-id", request_id),)
    health_stub = health_pb2_grpc.HealthStub(channel)
    diagnostics_stub = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel)
    started = time.perf_counter()
    health_call = health_stub.Check(
        health_pb2.HealthCheckRequest(service=""), timeout=wait_seconds, metadata=metadata
    )
    diagnostics_call = diagnostics_stub.CheckDependencies(
        diagnostics_pb2.CheckDependenciesRequest(), timeout=wait_seconds, metadata=metadata
    )
    results: tuple[Any, Any] = await asyncio.gather(
        health_call, diagnostics_call, return_exceptions=True
    )
    health_result, diagnostics_result = results
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    diagnostics = (
        message_to_json(diagnostics_result)
        if isinstance(diagnostics_result, diagnostics_pb2.CheckDependenciesResponse)
        else None
    )
    if isinstance(health_result, health_pb2.HealthCheckResponse):
        state = health_pb2.HealthCheckResponse.ServingStatus.Name(health_result.status)
        return ServiceHealth(
            name,
            target,
            health_result.status == health_pb2.HealthCheckResponse.SERVING,
            state,
            latency_ms,
            diagnostics,
        )
    message = (
        f"{health_result.code().name}"
        if isinstance(health_result, grpc.aio.AioRpcError)
        else type(health_result).__name__
    )
    return ServiceHealth(
        name, target, False, "UNREACHABLE", latency_ms, diagnostics, f"health check: {message}"
    )


async def detailed_health(
    channels: Mapping[str, grpc.aio.Channel],
    targets: Mapping[str, str],
    wait_seconds: float,
    request_id: str,
) -> tuple[bool, dict[str, Any]]:
    """(healthy, body) over every service the gateway routes to."""
    results = await asyncio.gather(
        *(
            check_service(name, targets[name], channel, wait_seconds, request_id)
            for name, channel in channels.items()
        )
    )
    dependencies: dict[str, dict[str, Any]] = {}
    for result in results:
        for dependency in result.dependencies:
            entry = dict(dependency, service=result.name)
            key = str(dependency.get("name", ""))
            # One store seen by several services: report the worst view of it.
            if key not in dependencies or entry.get("state") != "up":
                dependencies[key] = entry
    healthy = all(result.healthy for result in results)
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "services": {result.name: result.as_json() for result in results},
        "dependencies": dependencies,
    }
    return healthy, body
