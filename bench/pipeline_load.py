"""Helpers of bench_pipeline.py: creating tasks at a paced rate (for the latency
at half of the peak), and each process's memory."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from google.protobuf import json_format
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared.grpc_client import create_channel
from tests.support.vectors import dstack_create_task_json


async def create_paced(target: str, count: int, rate: float) -> list[str]:
    """Create `count` tasks at `rate` per second (each on its own schedule, so a
    slow reply does not slow the ones after it); returns their ids."""
    template = json_format.ParseDict(dstack_create_task_json(), tasks_pb2.CreateTaskRequest())
    channel = create_channel(target)
    stub = tasks_pb2_grpc.TaskServiceStub(channel)
    ids: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def create(n: int) -> None:
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        request = tasks_pb2.CreateTaskRequest()
        request.CopyFrom(template)
        request.request_id = uuid.uuid4().hex
        ids.append((await stub.CreateTask(request, timeout=60)).task.id)

    try:
        await asyncio.gather(*(create(n) for n in range(count)))
    finally:
        await channel.close()
    return ids


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def rss_mib(pid: int) -> tuple[float, float]:
    """(the process's own RSS, with its child processes) in MiB."""
    own = _rss_kib(pid)
    total = own + sum(_rss_kib(child) for child in _children(pid))
    return own / 1024, total / 1024


def memory_line(label: str, pids: dict[str, int]) -> str:
    parts = []
    for name, pid in pids.items():
        own, total = rss_mib(pid)
        parts.append(f"{name}={own:.0f}" + (f"(+children {total:.0f})" if total > own else ""))
    return f"memory after {label}: " + " ".join(parts) + " MiB RSS; " + _uptime()


def _uptime() -> str:
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return "load unknown"
    return f"load average {' '.join(load)} at {time.strftime('%H:%M:%S')}"
