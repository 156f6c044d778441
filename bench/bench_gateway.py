"""What the REST gateway adds to a GetTask: requests per second and latency
percentiles of GET /api/v1/tasks/{id} through the gateway, and of the same
TaskService.GetTask over gRPC directly, in one run, with N concurrent clients.

The tasks service (on PostgreSQL: DATABASE_URL, else the local server at
127.0.0.1:5432, in a throwaway database) and the gateway run as their own
processes, as deployed (`python -m services.tasks`, `python -m services.gateway`).
The HTTP load comes from a minimal keep-alive client on raw sockets so the
client's own cost stays small next to what is measured.

    .venv/bin/python bench/bench_gateway.py [--clients 64] [--seconds 8] [--modes off,key]

Each mode is its own stack: `off` runs with AUTH_ENABLED=false, `key` with
authentication on and every request carrying an API key (the gateway passes
it through; the tasks service validates it, cached).

Target: the gateway adds under 5 ms at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "shared" / "gen"))

from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc  # noqa: E402
from verifier.verification.v1 import verification_pb2  # noqa: E402

from shared.grpc_client import CHANNEL_OPTIONS  # noqa: E402
from shared.tls import ensure_dev_certs  # noqa: E402
from tests.support.auth import create_key  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_load(
    call: Callable[[], Awaitable[None]], clients: int, seconds: float
) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of `clients` loops calling `call`."""
    latencies: list[float] = []
    stop_at = 0.0

    async def client() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    # Warm-up: connections open, caches filled, then the measured window.
    stop_at = time.perf_counter() + 1.0
    await asyncio.gather(*(client() for _ in range(clients)))
    latencies.clear()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, sorted(latencies)


class KeepAliveHttp:
    """GET one path over a pool of persistent HTTP/1.1 connections (one per client)."""

    def __init__(self, host: str, port: int, path: str, clients: int, key: str = "") -> None:
        self.host, self.port = host, port
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.clients = clients

    async def open(self) -> None:
        for _ in range(self.clients):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def get(self) -> None:
        reader, writer = await self.pool.get()
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed an idle keep-alive connection: open a new one.
            writer.close()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        self.pool.put_nowait((reader, writer))
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}")

    async def close(self) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()


def wait_http(url: str, seconds: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def wait_grpc(target: str, seconds: float = 60) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), seconds)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, rate: float, latencies: list[float]) -> dict[str, float]:
    figures = {
        "rate": rate,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
    }
    print(
        f"{name:<22} {rate:9.0f} req/s   p50 {figures['p50']:7.2f} ms"
        f"   p99 {figures['p99']:7.2f} ms   ({len(latencies)} requests)"
    )
    return figures


async def measure(
    tasks_target: str,
    gateway_port: int,
    clients: int,
    light_clients: int,
    seconds: float,
    pids: dict[str, int],
    key: str = "",
) -> dict[int, dict[str, float]]:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    figures: dict[int, dict[str, float]] = {}
    async with grpc.aio.insecure_channel(tasks_target, options=CHANNEL_OPTIONS) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        created = await stub.CreateTask(
            tasks_pb2.CreateTaskRequest(
                app_id="bench",
                app_name="bench",
                app_config_type=verification_pb2.APP_CONFIG_TYPE_REDPILL,
                model_or_domain="example.com",
            ),
            metadata=metadata,
        )
        task_id = created.task.id
        request = tasks_pb2.GetTaskRequest(id=task_id)
        for count in (clients, light_clients) if light_clients else (clients,):
            figures[count] = await compare(
                stub, request, task_id, gateway_port, count, seconds, pids, key
            )
    return figures


async def compare(
    stub: tasks_pb2_grpc.TaskServiceStub,
    request: tasks_pb2.GetTaskRequest,
    task_id: str,
    gateway_port: int,
    clients: int,
    seconds: float,
    pids: dict[str, int],
    key: str = "",
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()

    async def direct() -> None:
        await stub.GetTask(request, metadata=metadata)

    http = KeepAliveHttp("127.0.0.1", gateway_port, f"/api/v1/tasks/{task_id}", clients, key)
    await http.open()
    print(f"\nGetTask of one task, {clients} concurrent clients, {seconds:.0f} s per run")
    # Interleaved runs, so drift (other load, caches) affects both alike.
    results: dict[str, list[dict[str, float]]] = {"grpc": [], "gateway": []}
    gateway_cpu = 0.0
    gateway_requests = 0
    for _ in range(2):
        results["grpc"].append(report("gRPC direct", *await run_load(direct, clients, seconds)))
        before = cpu_seconds(pids["gateway"])
        rate, latencies = await run_load(http.get, clients, seconds)
        gateway_cpu += cpu_seconds(pids["gateway"]) - before
        gateway_requests += len(latencies)
        results["gateway"].append(report("REST via gateway", rate, latencies))
    await http.close()

    def best(kind: str, key: str) -> float:
        values = [run[key] for run in results[kind]]
        return max(values) if key == "rate" else min(values)

    grpc_rate, gateway_rate = best("grpc", "rate"), best("gateway", "rate")
    added_p99 = best("gateway", "p99") - best("grpc", "p99")
    added_p50 = best("gateway", "p50") - best("grpc", "p50")
    print(f"throughput ratio gateway/gRPC: {gateway_rate / grpc_rate:.2f}")
    print(f"latency the gateway adds: p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms")
    # Warm-up requests are in the CPU time too; the figure is a slight overestimate.
    per_request = gateway_cpu / gateway_requests * 1e6
    print(f"gateway CPU per request: about {per_request:.0f} us")
    verdict = "met" if added_p99 < 5.0 else "NOT met"
    print(f"target (gateway adds < 5 ms at p99): {verdict}")
    return {
        "grpc_rate": grpc_rate,
        "gateway_rate": gateway_rate,
        "grpc_p50": best("grpc", "p50"),
        "grpc_p99": best("grpc", "p99"),
        "gateway_p50": best("gateway", "p50"),
        "gateway_p99": best("gateway", "p99"),
    }


def print_auth_cost(results: dict[str, dict[int, dict[str, float]]]) -> None:
    """Each mode next to AUTH_ENABLED=false, per client count (ratio to "off")."""
    base = results.get("off", {})
    print("\nthe cost of authentication (API key on every request), ratio to off:")
    for mode, by_clients in results.items():
        for clients, f in by_clients.items():
            b = base.get(clients)
            ratio = ""
            if b and mode != "off":
                ratio = (
                    f"  (x{f['gateway_rate'] / b['gateway_rate']:.2f} REST rate,"
                    f" x{f['grpc_rate'] / b['grpc_rate']:.2f} gRPC rate)"
                )
            print(
                f"  {mode:<4} {clients:>3} clients: REST {f['gateway_rate']:6.0f}/s"
                f" p50 {f['gateway_p50']:.2f} p99 {f['gateway_p99']:.2f} ms;"
                f" gRPC {f['grpc_rate']:6.0f}/s p50 {f['grpc_p50']:.2f}"
                f" p99 {f['grpc_p99']:.2f} ms{ratio}"
            )


def auth_env(mode: str) -> dict[str, str]:
    if mode == "off":
        return {"AUTH_ENABLED": "false"}
    certs = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-gateway-certs"
    ensure_dev_certs(certs)
    return {
        "AUTH_ENABLED": "true",
        "TLS_DIR": str(certs),
        "TASKS_INTERNAL_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        # No queue runs (as without auth): tasks stay pending.
        "QUEUE_INTERNAL_ADDR": f"127.0.0.1:{free_port()}",
        "ADMIN_KEY_FILE": str(certs / f"admin-{uuid.uuid4().hex[:6]}.key"),
        # Buckets computed on every call, never refusing at this load.
        "RATE_LIMIT_READ_PER_SECOND": "1000000",
        "RATE_LIMIT_READ_BURST": "1000000",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--light-clients", type=int, default=4, help="a second, unsaturated run (0: none)"
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--modes", default="off,key", help="auth modes, each its own stack")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = {mode: run_mode(args, mode) for mode in args.modes.split(",")}
    print_auth_cost(results)


def run_mode(args: argparse.Namespace, mode: str) -> dict[int, dict[str, float]]:
    print(f"\n== auth mode {mode!r}")

    server_url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    database = f"bench_gateway_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    database_url = f"{server_url.rsplit('/', 1)[0]}/{database}"
    tasks_port, gateway_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "S3_", "VERIFIER_"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "TASKS_LISTEN_ADDR": f"127.0.0.1:{tasks_port}",
            "TASKS_ADDR": f"127.0.0.1:{tasks_port}",
            # No queue runs: created tasks stay pending, which GetTask does not mind.
            "QUEUE_ADDR": f"127.0.0.1:{free_port()}",
            "HOST": "127.0.0.1",
            "PORT": str(gateway_port),
            "LOG_LEVEL": "error",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "shared" / "gen")]),
            **auth_env(mode),
        }
    )
    key = create_key(env, "bench", "tasks.submit,tasks.read") if mode != "off" else ""
    procs = [
        subprocess.Popen([sys.executable, "-m", "services.tasks"], cwd=ROOT, env=env),
        subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env),
    ]
    try:
        asyncio.run(wait_grpc(f"127.0.0.1:{tasks_port}"))
        wait_http(f"http://127.0.0.1:{gateway_port}/health")
        pids = {"tasks": procs[0].pid, "gateway": procs[1].pid}
        return asyncio.run(
            measure(
                f"127.0.0.1:{tasks_port}",
                gateway_port,
                args.clients,
                args.light_clients,
                args.seconds,
                pids,
                key,
            )
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
