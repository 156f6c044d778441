"""The verification service's two ways in, side by side: VerifyTasks with a
batch of 32 against one Verify at a time (and 32 Verify calls at once).

The verification service runs in this process (its real build_spec, a process
pool of --processes workers) with its reports in S3 over HTTP (a throwaway
SeaweedFS, or S3_ENDPOINT). Every task is the dstack quote-report vector inline
with hardware, os and source_code on, verified for real and its report written
once. VerifyTasks reads each batch's inputs with one
TaskWorkerService.GetTaskInputs call; here a stand-in serves them from memory,
so the figures are the verification service's own (the tasks service's cost is
in bench_pipeline.py). Also counts the S3 requests per stored report the
service's main process makes, by operation (botocore events on its own
client); the report PUTs are the pool processes' (one per report:
tests/integration/verification/test_report_store_s3.py).

Prints one line per mode, then
`verify_tasks_per_s=<x> verify_one_at_a_time_per_s=<y> ratio=<x/y> ...`.

    .venv/bin/python bench/bench_verify_tasks.py [--tasks 640] [--batch 32] [--processes 2]
    .venv/bin/python bench/bench_verify_tasks.py --real-tasks
        the same with the real tasks service behind GetTaskInputs (PostgreSQL,
        Redis, S3, every service a process)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared" / "gen")]

import boto3  # noqa: E402
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from verifier.tasks.v1 import tasks_pb2, tasks_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from verifier.verification.v1 import engine_pb2, engine_pb2_grpc  # noqa: E402
from verifier.verification.v1 import verification_pb2 as pb  # noqa: E402

from services.verification.main import build_spec  # noqa: E402
from services.verification.settings import VerificationSettings  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.grpc_client import create_channel  # noqa: E402
from shared.grpc_server import start_server  # noqa: E402
from shared.log import configure_logging  # noqa: E402
from tests.fault.stack import PipelineStack, pipeline_stack, stack_env  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.vectors import (  # noqa: E402
    DSTACK_EVALUATION_TIME_TEXT,
    dstack_app_id,
    dstack_compose_hash,
    dstack_create_task_json,
    dstack_evidence_json,
)

OK = grpc.StatusCode.OK.value[0]


def _request() -> pb.VerifyRequest:
    body = {
        "appId": dstack_app_id(),
        "appConfigType": "APP_CONFIG_TYPE_PHALA_CLOUD",
        "flags": {
            "hardware": True,
            "os": True,
            "sourceCode": True,
            "teeControlledKey": False,
            "certificateKey": False,
        },
        "evidence": dstack_evidence_json(),
        "expectedComposeHash": dstack_compose_hash(),
        "evaluationTime": DSTACK_EVALUATION_TIME_TEXT,
    }
    return json_format.ParseDict(body, pb.VerifyRequest())


class StandInInputs(worker_pb2_grpc.TaskWorkerServiceServicer):
    """GetTaskInputs from memory: every lease is current."""

    def __init__(self) -> None:
        self.template = _request()
        self.calls = 0

    async def GetTaskInputs(
        self, request: worker_pb2.GetTaskInputsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetTaskInputsResponse:
        self.calls += 1
        items = []
        for task in request.tasks:
            item = worker_pb2.TaskInput(task=task)
            item.status.code = OK
            item.request.CopyFrom(self.template)
            item.request.task_id, item.request.attempt = task.task_id, task.attempt
            items.append(item)
        return worker_pb2.GetTaskInputsResponse(tasks=items)


def _ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def _verify_tasks(
    stub: engine_pb2_grpc.VerificationEngineServiceStub, ids: list[str], batch: int
) -> None:
    for start in range(0, len(ids), batch):
        request = engine_pb2.VerifyTasksRequest(
            tasks=[engine_pb2.TaskLease(task_id=t, attempt=1) for t in ids[start : start + batch]]
        )
        async for item in stub.VerifyTasks(request):
            if item.status.code != OK:
                raise RuntimeError(f"VerifyTasks item failed: {item.status}")


async def _verify_tasks_overlapped(
    stub: engine_pb2_grpc.VerificationEngineServiceStub, ids: list[str], batch: int
) -> None:
    """Two batches in flight, as a worker with twice the batch in free slots."""
    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
    pending = iter(chunks)

    async def lane() -> None:
        for chunk in pending:
            await _verify_tasks(stub, chunk, batch)

    await asyncio.gather(lane(), lane())


async def _verify_one_at_a_time(
    stub: engine_pb2_grpc.VerificationEngineServiceStub, ids: list[str]
) -> None:
    template = _request()
    for task_id in ids:
        request = pb.VerifyRequest()
        request.CopyFrom(template)
        request.task_id, request.attempt = task_id, 1
        await stub.Verify(request)


async def _verify_concurrently(
    stub: engine_pb2_grpc.VerificationEngineServiceStub, ids: list[str], callers: int
) -> None:
    template = _request()
    pending = iter(ids)

    async def caller() -> None:
        for task_id in pending:
            request = pb.VerifyRequest()
            request.CopyFrom(template)
            request.task_id, request.attempt = task_id, 1
            await stub.Verify(request)

    await asyncio.gather(*(caller() for _ in range(callers)))


async def _timed(run: Callable[[], Awaitable[None]], count: int) -> float:
    started = time.perf_counter()
    await run()
    return count / (time.perf_counter() - started)


async def bench(args: argparse.Namespace, s3: servers.S3Server) -> None:
    sent: Counter[str] = Counter()

    def count(model: object, **_: object) -> None:
        sent[getattr(model, "name", "?")] += 1

    # The service's S3 client is made from boto3's default session: count there.
    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register("before-call.s3", count)

    # Only GetTaskInputs is served: the other RPCs answer UNIMPLEMENTED.
    inputs = StandInInputs()  # type: ignore[abstract]
    tasks_server = grpc.aio.server()
    worker_pb2_grpc.add_TaskWorkerServiceServicer_to_server(inputs, tasks_server)
    tasks_port = tasks_server.add_insecure_port("127.0.0.1:0")
    await tasks_server.start()
    data = Path(tempfile.mkdtemp(prefix="bench-verify-tasks-"))
    settings = load_settings(
        VerificationSettings,
        env={
            "DATA_DIR": str(data),
            "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
            "VERIFICATION_PROCESSES": str(args.processes),
            "TASKS_ADDR": f"127.0.0.1:{tasks_port}",
            "METRICS_ENABLED": "false",
            # The engine's own cost: no certificates, no keys (auth came later).
            "AUTH_ENABLED": "false",
            "LOG_LEVEL": "warning",
            "S3_ENDPOINT": s3.endpoint,
            "S3_BUCKET": f"bench-{uuid.uuid4().hex[:10]}",
            "S3_ACCESS_KEY_ID": s3.access_key_id or "bench",
            "S3_SECRET_ACCESS_KEY": s3.secret_access_key or "bench",
        },
    )
    running = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            stub = engine_pb2_grpc.VerificationEngineServiceStub(channel)
            # Warm up: the pool's processes, the bucket, the conditional-put probe.
            await _verify_tasks(stub, _ids(args.batch), args.batch)
            before = Counter(sent)
            ids = _ids(args.tasks)
            await _verify_one_at_a_time(stub, ids[:32])
            writes = Counter({k: v - before.get(k, 0) for k, v in sent.items()})
            per_report = {k: round(v / 32, 2) for k, v in writes.items() if v}
            print(f"s3_requests_per_report={per_report}")
            rates: dict[str, list[float]] = {
                "batch": [],
                "single": [],
                "concurrent": [],
                "overlapped": [],
            }
            chunk = args.tasks // args.rounds
            for round_ in range(args.rounds):
                # Alternate the modes, so drift in this VM's speed hits each alike.
                rates["batch"].append(
                    await _timed(lambda: _verify_tasks(stub, _ids(chunk), args.batch), chunk)
                )
                rates["single"].append(
                    await _timed(lambda: _verify_one_at_a_time(stub, _ids(chunk)), chunk)
                )
                rates["concurrent"].append(
                    await _timed(lambda: _verify_concurrently(stub, _ids(chunk), args.batch), chunk)
                )
                rates["overlapped"].append(
                    await _timed(
                        lambda: _verify_tasks_overlapped(stub, _ids(chunk), args.batch), chunk
                    )
                )
                print(
                    f"round={round_ + 1} verify_tasks_2x_batch{args.batch}_in_flight="
                    f"{rates['overlapped'][-1]:.1f}/s",
                    flush=True,
                )
                print(
                    f"round={round_ + 1} verify_tasks_batch{args.batch}="
                    f"{rates['batch'][-1]:.1f}/s verify_one_at_a_time="
                    f"{rates['single'][-1]:.1f}/s verify_{args.batch}_concurrent="
                    f"{rates['concurrent'][-1]:.1f}/s",
                    flush=True,
                )
    finally:
        await running.stop(1.0)
        await tasks_server.stop(0)
    batch = sum(rates["batch"]) / len(rates["batch"])
    single = sum(rates["single"]) / len(rates["single"])
    concurrent = sum(rates["concurrent"]) / len(rates["concurrent"])
    overlapped = sum(rates["overlapped"]) / len(rates["overlapped"])
    print(
        f"load={os.getloadavg()[0]:.2f} processes={args.processes} "
        f"get_task_inputs_calls={inputs.calls}"
    )
    print(
        f"verify_tasks_per_s={batch:.1f} verify_one_at_a_time_per_s={single:.1f} "
        f"ratio={batch / single:.2f} verify_concurrent_per_s={concurrent:.1f} "
        f"ratio_to_concurrent={batch / concurrent:.2f} "
        f"verify_tasks_2_in_flight_per_s={overlapped:.1f}"
    )


async def bench_real_tasks(args: argparse.Namespace, stack: PipelineStack) -> None:
    """The same two ways in, with the real tasks service (PostgreSQL) behind
    GetTaskInputs and every service a process of its own."""
    template = json_format.ParseDict(dstack_create_task_json(), tasks_pb2.CreateTaskRequest())

    async def leases(count: int) -> list[tuple[str, int]]:
        # StartTasks is internal (mutual TLS, as a worker calls it).
        async with stack.channel("tasks") as channel, stack.internal_channel("tasks") as internal:
            tasks = tasks_pb2_grpc.TaskServiceStub(channel)
            worker = worker_pb2_grpc.TaskWorkerServiceStub(internal)
            ids: list[str] = []
            for _ in range(count):
                request = tasks_pb2.CreateTaskRequest()
                request.CopyFrom(template)
                request.request_id = uuid.uuid4().hex
                ids.append((await tasks.CreateTask(request, timeout=60)).task.id)
            out: list[tuple[str, int]] = []
            for start in range(0, count, 500):
                started = await worker.StartTasks(
                    worker_pb2.StartTasksRequest(
                        worker_id="bench", task_ids=ids[start : start + 500]
                    ),
                    timeout=60,
                )
                out.extend((t.task_id, t.attempt) for t in started.tasks if t.status.code == OK)
            return out

    async with stack.internal_channel("verification") as channel:
        stub = engine_pb2_grpc.VerificationEngineServiceStub(channel)
        await _verify_leases(stub, await leases(args.batch), args.batch)  # warm up
        chunk = args.tasks // args.rounds
        batch_rates, single_rates = [], []
        proc = stack.service("verification").proc
        assert proc is not None
        for round_ in range(args.rounds):
            todo = await leases(2 * chunk)
            cpu = _cpu_seconds(proc.pid)
            started = time.perf_counter()
            await _verify_leases(stub, todo[:chunk], args.batch)
            batch_rates.append(chunk / (time.perf_counter() - started))
            batch_cpu = [
                1000 * (b - a) / chunk for a, b in zip(cpu, _cpu_seconds(proc.pid), strict=True)
            ]
            cpu = _cpu_seconds(proc.pid)
            started = time.perf_counter()
            await _verify_one_at_a_time(stub, [t for t, _ in todo[chunk:]])
            single_rates.append(chunk / (time.perf_counter() - started))
            single_cpu = [
                1000 * (b - a) / chunk for a, b in zip(cpu, _cpu_seconds(proc.pid), strict=True)
            ]
            print(
                f"round={round_ + 1} real_tasks verify_tasks_batch{args.batch}="
                f"{batch_rates[-1]:.1f}/s verify_one_at_a_time={single_rates[-1]:.1f}/s "
                f"cpu_ms_per_task(main,pool): batch={batch_cpu[0]:.2f},{batch_cpu[1]:.2f} "
                f"single={single_cpu[0]:.2f},{single_cpu[1]:.2f}",
                flush=True,
            )
    batch = sum(batch_rates) / len(batch_rates)
    single = sum(single_rates) / len(single_rates)
    print(f"load={os.getloadavg()[0]:.2f} processes={args.processes} tasks_service=real")
    print(
        f"verify_tasks_per_s={batch:.1f} verify_one_at_a_time_per_s={single:.1f} "
        f"ratio={batch / single:.2f}"
    )


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own, its children's) CPU seconds so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    own = float(sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().split()[13:15]))
    children = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{child}/stat").read_text().split()
                children += int(fields[13]) + int(fields[14])
    return own / ticks, children / ticks


async def _verify_leases(
    stub: engine_pb2_grpc.VerificationEngineServiceStub,
    leases: list[tuple[str, int]],
    batch: int,
) -> None:
    for start in range(0, len(leases), batch):
        request = engine_pb2.VerifyTasksRequest(
            tasks=[
                engine_pb2.TaskLease(task_id=t, attempt=a) for t, a in leases[start : start + batch]
            ]
        )
        async for item in stub.VerifyTasks(request):
            if item.status.code != OK:
                raise RuntimeError(f"VerifyTasks item failed: {item.status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=640, help="tasks per mode, over all rounds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--real-tasks",
        action="store_true",
        help="GetTaskInputs from the real tasks service (PostgreSQL, Redis, S3; "
        "services as processes) instead of the in-memory stand-in",
    )
    args = parser.parse_args()
    configure_logging("bench", "warning", "console")
    with servers.s3_server() as s3:
        if not args.real_tasks:
            asyncio.run(bench(args, s3))
            return
        with (
            servers.postgres_server() as pg,
            servers.postgres_database(pg, prefix="bench_vtasks") as database,
            servers.redis_server() as redis_url,
        ):
            env = stack_env(
                database_url=database,
                redis_url=redis_url,
                s3=s3,
                workdir=Path(tempfile.mkdtemp(prefix="bench-vtasks-")),
                queue_name=f"bench-vtasks-{uuid.uuid4().hex[:8]}",
                verification_processes=str(args.processes),
                log_level="warning",
            )
            with pipeline_stack(env, workers=0) as stack:
                asyncio.run(bench_real_tasks(args, stack))


if __name__ == "__main__":
    main()
