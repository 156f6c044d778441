"""Helpers of bench_pipeline.py: creating tasks at a paced rate (for the latency
at half of the peak), and each process's memory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from shared.grpc_client import create_channel
from tests.support.vectors import dstack_create_task_json


@dataclass(frozen=True)
class Target:
    """The tasks service under test and the admin key its clients carry."""

    address: str
    api_key: str

    def channel(self) -> grpc.aio.Channel:
        return create_channel(self.address, api_key=self.api_key)


async def create_paced(target: Target, count: int, rate: float) -> list[str]:
    """Create `count` tasks at `rate` per second (each on its own schedule, so a
    slow reply does not slow the ones after it); returns their ids."""
    template = json_format.ParseDict(dstack_create_task_json(), tasks_pb2.CreateTaskRequest())
    channel = target.channel()
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


class Profiler:
    """py-spy on each process of the stack while the peak phase runs (with
    `--profile DIR`): one collapsed-stack file per process (`DIR/<name>.txt`,
    the verification pool's processes included), and a summary of the
    functions holding the most samples."""

    def __init__(self, folder: Path | None, pids: dict[str, int]) -> None:
        self.folder = folder
        self.pids = pids
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Profiler:
        if self.folder is None:
            return self
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            self.procs[name] = subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"),
                    *(
                        "--subprocesses",
                        "--nonblocking",
                        "--output",
                        str(self.folder / f"{name}.txt"),
                    ),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for name, proc in self.procs.items():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if self.folder is not None:
                print(profile_summary(name, self.folder / f"{name}.txt"))


def profile_summary(name: str, path: Path, top: int = 15) -> str:
    """Per process of one collapsed-stack file (the service, each pool process):
    its busy CPU seconds and the functions holding most of them (inclusive;
    idle frames and the event loop's, runpy's and threading's own frames left
    out), as a share of that process's busy samples."""
    inclusive: dict[str, Counter[str]] = {}
    busy: Counter[str] = Counter()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"profile {name}: none"
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in _IDLE):
            continue
        # The leading frames name the process (and, for a pool process, its parent).
        role = "pool processes" if "multiprocessing-fork" in stack else "main"
        frames = [frame for frame in frames if " (" in frame and not frame.startswith("process ")]
        count = int(count_text)
        busy[role] += count
        counter = inclusive.setdefault(role, Counter())
        for frame in {_short(frame) for frame in frames}:
            if frame.rpartition("(")[2].rstrip(")") not in _GENERIC:
                counter[frame] += count
    out = []
    for role, total in busy.most_common():
        out.append(f"profile {name} {role}: {total / _RATE:.1f} s holding the GIL")
        for frame, count in inclusive[role].most_common(top):
            out.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(out)


_RATE = 100
_IDLE = (
    "select (",
    "poll (",
    "epoll",
    "_run_once (",
    "wait (threading",
    "acquire",
    "_recv_bytes",
    "get (queue",
    "sleep",
)
_GENERIC = {
    "base_events.py",
    "events.py",
    "runners.py",
    "<frozen runpy>",
    "threading.py",
    "process.py",
    "spawn.py",
    "thread.py",
    "__main__.py",
    "<string>",
    "queues.py",
    "main.py",
}


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py)`: one entry per function."""
    func, _, where = frame.partition(" (")
    return f"{func} ({Path(where.split(':')[0]).name})"


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


def cpu_seconds(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Per process: (its own CPU seconds, user + system, its children's) from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick

    return {name: (of(pid), sum(of(c) for c in _children(pid))) for name, pid in pids.items()}


def infra_cpu_seconds(database_url: str, s3_endpoint: str) -> dict[str, float]:
    """CPU seconds of the PostgreSQL backends serving the bench's database (the
    ones alive now) and of the SeaweedFS server on the S3 endpoint's port; Redis
    is shared with other test runs on this machine, so it is not counted."""
    import psycopg

    tick = os.sysconf("SC_CLK_TCK")
    out = {"postgres": 0.0, "seaweedfs": 0.0}
    with psycopg.connect(database_url, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    port = s3_endpoint.rsplit(":", 1)[-1].strip("/")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(proc.name) in pids:
            out["postgres"] += seconds
        elif "weed" in cmdline.split(" ")[0] and f"-s3.port={port} " in cmdline:
            out["seaweedfs"] += seconds
    return out


def cpu_line(
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    tasks: int,
    infra_before: dict[str, float],
    infra_after: dict[str, float],
) -> str:
    """CPU milliseconds per task of each process between two readings: our
    processes (cpu_seconds), then PostgreSQL's backends and SeaweedFS."""
    parts = []
    ours = 0.0
    for name, (own, children) in after.items():
        own_ms = 1000 * (own - before[name][0]) / tasks
        children_ms = 1000 * (children - before[name][1]) / tasks
        ours += own_ms + children_ms
        parts.append(f"{name}={own_ms:.2f}" + (f"(+pool {children_ms:.2f})" if children_ms else ""))
    infra = {name: 1000 * (infra_after[name] - infra_before[name]) / tasks for name in infra_after}
    parts.extend(f"{name}={ms:.2f}" for name, ms in infra.items())
    total = ours + sum(infra.values())
    return (
        f"CPU ms per task: {' '.join(parts)}; our processes {ours:.2f}, with PostgreSQL and "
        f"SeaweedFS {total:.2f} ({1000 / total:.0f} tasks/s per core; Redis not counted)"
    )


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
