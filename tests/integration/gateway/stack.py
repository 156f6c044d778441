"""The real services behind the gateway, in-process on real sockets: tasks on
PostgreSQL, queue on Redis (a queue name of its own), verification on S3 (or
its local folder), optionally one queue worker, and the gateway in front."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from services.queue.main import build_spec as queue_spec
from services.queue.worker import run_worker
from services.tasks.main import apply_migrations, build_service
from services.verification.main import build_spec as verification_spec
from shared.grpc_server import RunningServer, start_server
from tests.integration.gateway.support import running_gateway
from tests.support.servers import S3Server, free_port
from tests.support.settings import StackSettings, stack_settings_from


@dataclass
class Stack:
    settings: StackSettings
    base_url: str
    servers: dict[str, RunningServer]


def stack_settings(
    postgres_url: str, redis_url: str, data_dir: Path, s3: S3Server | None = None, **extra: Any
) -> StackSettings:
    ports = {name: free_port() for name in ("tasks", "queue", "verification")}
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "queue_name": f"gateway-test-{uuid.uuid4().hex[:10]}",
        "data_dir": str(data_dir),
        "host": "127.0.0.1",
        "port": 0,
        "health_probe_interval_seconds": 0.5,
        "worker_heartbeat_seconds": 0.5,
        "verification_processes": 1,
        "log_level": "warning",
        "shutdown_grace_seconds": 2.0,
        # No fixed metrics ports in tests.
        "tasks_metrics_listen_addr": "",
        "queue_metrics_listen_addr": "",
        "verification_metrics_listen_addr": "",
    }
    for name, port in ports.items():
        values[f"{name}_listen_addr"] = f"127.0.0.1:{port}"
        values[f"{name}_addr"] = f"127.0.0.1:{port}"
    if s3 is not None:
        values |= {
            "s3_endpoint": s3.endpoint,
            "s3_access_key_id": s3.access_key_id,
            "s3_secret_access_key": s3.secret_access_key,
            "s3_region": s3.region,
            "s3_bucket": f"gateway-{uuid.uuid4().hex[:10]}",
        }
    # Transcoding and routing; authentication through the gateway: tests/integration/auth.
    values["auth_enabled"] = False
    values.update(extra)
    return stack_settings_from(values)


async def wait_ready(base_url: str, within_seconds: float = 60.0) -> None:
    """Until /health/detailed says every service and store is up (as a deployment waits
    for readiness): a service's first probe pass, or its bucket, may still be pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    last = ""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        while loop.time() < deadline:
            response = await http.get("/health/detailed")
            if response.status_code == 200:
                return
            last = response.text
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the stack did not become healthy: {last}")


@contextlib.asynccontextmanager
async def running_stack(
    settings: StackSettings, *, with_worker: bool = False
) -> AsyncIterator[Stack]:
    await asyncio.to_thread(apply_migrations, settings.tasks)
    servers: dict[str, RunningServer] = {}
    stop_worker = asyncio.Event()
    worker_task: asyncio.Task[None] | None = None
    try:
        servers["verification"] = await start_server(verification_spec(settings.verification))
        servers["queue"] = await start_server(queue_spec(settings.queue))
        servers["tasks"] = await start_server(build_service(settings.tasks).spec)
        if with_worker:
            worker_task = asyncio.create_task(run_worker(settings.queue, stop_worker))
        async with running_gateway(settings.gateway) as base_url:
            await wait_ready(base_url)
            yield Stack(settings, base_url, servers)
    finally:
        stop_worker.set()
        if worker_task is not None:
            await asyncio.wait_for(worker_task, 20)
        for name in ("tasks", "queue", "verification"):
            if name in servers:
                await servers[name].stop(0.5)
        if settings.queue.redis_url:  # embedded (no Redis): nothing to clean up
            redis = Redis.from_url(settings.queue.redis_url)
            keys = [key async for key in redis.scan_iter(f"*{settings.queue.queue_name}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()
