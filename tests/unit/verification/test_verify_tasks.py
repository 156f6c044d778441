"""VerifyTasks over real sockets against a stand-in TaskWorkerService (the
tasks service's GetTaskInputs): one streamed result per task, one input read
per batch, the attempt fenced, each report written once.

The stand-in serves only GetTaskInputs, from a table of leases; the
integration and end-to-end tests use the real tasks service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from prometheus_client import REGISTRY
from verifier.tasks.v1 import worker_pb2, worker_pb2_grpc
from verifier.verification.v1 import engine_pb2, engine_pb2_grpc, verification_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from services.verification import envelope
from services.verification.main import build_spec
from services.verification.report import verify_report_signature
from services.verification.report_store import LocalReportStore
from services.verification.settings import VerificationSettings
from shared import metrics
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import RunningServer, start_server
from tests.support.servers import free_port
from tests.support.vectors import (
    DSTACK_EVALUATION_TIME_TEXT,
    dstack_app_id,
    dstack_compose_hash,
    dstack_evidence_json,
)

OK = grpc.StatusCode.OK.value[0]
CURRENT = {f"{i:08d}-0000-4000-8000-000000000000": 1 for i in range(1, 6)}
STALE_TASK = "00000099-0000-4000-8000-000000000000"
BAD_TASK = "00000098-0000-4000-8000-000000000000"


def _request(task_id: str, attempt: int, **evidence: str) -> pb.VerifyRequest:
    body = {
        "taskId": task_id,
        "attempt": attempt,
        "appId": dstack_app_id(),
        "appConfigType": "APP_CONFIG_TYPE_PHALA_CLOUD",
        "flags": {
            "hardware": True,
            "os": True,
            "sourceCode": True,
            "teeControlledKey": False,
            "certificateKey": False,
        },
        "evidence": dstack_evidence_json() | evidence,
        "expectedComposeHash": dstack_compose_hash(),
        "evaluationTime": DSTACK_EVALUATION_TIME_TEXT,
    }
    return json_format.ParseDict(body, pb.VerifyRequest(), ignore_unknown_fields=False)


@dataclass
class StandInTaskWorker(worker_pb2_grpc.TaskWorkerServiceServicer):
    """Answers GetTaskInputs as the tasks service does: OK for a current
    attempt, FAILED_PRECONDITION for a stale one, NOT_FOUND for no task."""

    current: dict[str, int] = field(default_factory=lambda: dict(CURRENT))
    calls: list[list[tuple[str, int]]] = field(default_factory=list)
    # The earlier attempts of each task's current run, as the tasks service names them.
    earlier: dict[str, tuple[int, ...]] = field(default_factory=dict)

    async def GetTaskInputs(
        self, request: worker_pb2.GetTaskInputsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetTaskInputsResponse:
        self.calls.append([(t.task_id, t.attempt) for t in request.tasks])
        items = []
        for task in request.tasks:
            item = worker_pb2.TaskInput(task=task)
            if task.task_id == BAD_TASK:
                item.status.code = OK
                item.request.CopyFrom(_request(task.task_id, task.attempt, quote="abc"))
            elif task.task_id not in self.current and task.task_id != STALE_TASK:
                item.status.CopyFrom(status_pb2.Status(code=5, message="no such task"))
            elif self.current.get(task.task_id) != task.attempt:
                item.status.CopyFrom(status_pb2.Status(code=9, message="stale attempt"))
            else:
                item.status.code = OK
                item.request.CopyFrom(_request(task.task_id, task.attempt))
                item.earlier_attempts.extend(self.earlier.get(task.task_id, ()))
            items.append(item)
        return worker_pb2.GetTaskInputsResponse(tasks=items)


@dataclass
class Stack:
    engine: engine_pb2_grpc.VerificationEngineServiceStub
    public: verification_pb2_grpc.VerificationServiceStub
    tasks: StandInTaskWorker
    data_dir: Path


@pytest.fixture()
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with _serve(tmp_path) as served:
        yield served


@contextlib.asynccontextmanager
async def _serve(tmp_path: Path, **env: str) -> AsyncIterator[Stack]:
    stand_in = StandInTaskWorker()
    tasks_server = grpc.aio.server()
    worker_pb2_grpc.add_TaskWorkerServiceServicer_to_server(stand_in, tasks_server)
    tasks_port = tasks_server.add_insecure_port("127.0.0.1:0")
    await tasks_server.start()
    settings = load_settings(
        VerificationSettings,
        env={
            "DATA_DIR": str(tmp_path),
            "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
            "VERIFICATION_PROCESSES": "1",
            "TASKS_ADDR": f"127.0.0.1:{tasks_port}",
            "METRICS_ENABLED": "false",
            # The engine's batches; who may call it: tests/integration/auth.
            "AUTH_ENABLED": "false",
            **env,
        },
    )
    running: RunningServer = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            yield Stack(
                engine_pb2_grpc.VerificationEngineServiceStub(channel),
                verification_pb2_grpc.VerificationServiceStub(channel),
                stand_in,
                tmp_path,
            )
    finally:
        await running.stop(1.0)
        await tasks_server.stop(0)


async def _verify(
    stack: Stack, leases: list[tuple[str, int]]
) -> dict[str, engine_pb2.VerifyTasksResponse]:
    request = engine_pb2.VerifyTasksRequest(
        tasks=[engine_pb2.TaskLease(task_id=t, attempt=a) for t, a in leases]
    )
    results = [item async for item in stack.engine.VerifyTasks(request)]
    assert len(results) == len(leases)
    return {item.task.task_id: item for item in results}


def _reports(data_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(data_dir).as_posix() for p in (data_dir / "reports").rglob("*.json")
    )


async def test_a_batch_streams_one_signed_result_per_task_from_one_input_read(
    stack: Stack,
) -> None:
    leases = [(task_id, 1) for task_id in CURRENT]
    results = await _verify(stack, leases)
    assert stack.tasks.calls == [leases]  # one GetTaskInputs for the whole batch
    key = await stack.public.GetSigningKey(pb.GetSigningKeyRequest())
    for task_id, item in results.items():
        assert item.status.code == OK, item.status
        signed = item.signed_summary
        assert signed.key_id == key.key_id
        assert verify_report_signature(
            signed.summary, bytes.fromhex(signed.signature), bytes.fromhex(key.public_key)
        )
        summary = pb.ReportSummary.FromString(signed.summary)
        assert (summary.task_id, summary.attempt) == (task_id, 1)
        assert summary.verdict == pb.VERDICT_PASSED
        assert summary.s3_key == f"reports/{task_id}/1.json"
        assert item.finished_at.seconds > 0
    assert _reports(stack.data_dir) == sorted(f"reports/{t}/1.json" for t in CURRENT)


async def test_one_bad_task_never_fails_its_neighbours(stack: Stack) -> None:
    good = next(iter(CURRENT))
    leases = [
        (good, 1),
        (STALE_TASK, 1),
        (BAD_TASK, 1),
        ("00000097-0000-4000-8000-000000000000", 1),
    ]
    results = await _verify(stack, leases)
    assert results[good].status.code == OK
    stale = results[STALE_TASK].status
    assert stale.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "stale" in stale.message
    unknown = results["00000097-0000-4000-8000-000000000000"].status
    assert unknown.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    bad = results[BAD_TASK].status
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "quote" in bad.message
    # Only the good task has a report: a stale attempt never writes one.
    assert _reports(stack.data_dir) == [f"reports/{good}/1.json"]


async def test_one_tasks_store_failure_never_fails_its_neighbours(stack: Stack) -> None:
    """The pool's processes store the reports: a write that fails there is
    that task's UNAVAILABLE (retry), and its neighbours are stored."""
    broken, *others = list(CURRENT)[:3]
    (stack.data_dir / "reports").mkdir()
    (stack.data_dir / "reports" / broken).write_bytes(b"")  # a file where its folder goes
    results = await _verify(stack, [(t, 1) for t in (broken, *others)])
    status = results[broken].status
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "storing the report failed" in status.message
    for task_id in others:
        assert _summary(results[task_id]).s3_key == f"reports/{task_id}/1.json"
    assert _reports(stack.data_dir) == sorted(f"reports/{t}/1.json" for t in others)


def _verifications() -> tuple[float, float]:
    """(hardware checks that passed, verifications timed) so far in this process."""
    passed = REGISTRY.get_sample_value(
        "verifier_verifications_total", {"check": "hardware", "status": "passed"}
    )
    timed = REGISTRY.get_sample_value("verifier_verification_duration_seconds_count")
    return passed or 0.0, timed or 0.0


async def test_each_stored_report_is_counted_once_in_the_metrics(stack: Stack) -> None:
    was = metrics.enabled()
    metrics.configure(True)
    try:
        before = _verifications()
        leases = [(task_id, 1) for task_id in list(CURRENT)[:2]]
        await _verify(stack, leases)
        await _verify(stack, leases)  # a repeat finds them stored: not a new run
    finally:
        metrics.configure(was)
    after = _verifications()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 2)


async def test_reports_the_pool_stores_are_envelope_encrypted_with_the_folder_key(
    tmp_path: Path,
) -> None:
    task_id = next(iter(CURRENT))
    key = bytes(range(32))
    async with _serve(tmp_path, REPORT_ENCRYPTION_KEY=key.hex()) as sealed:
        summary = _summary((await _verify(sealed, [(task_id, 1)]))[task_id])
        report = await sealed.public.GetReport(pb.GetReportRequest(task_id=task_id))
    data = (tmp_path / summary.s3_key).read_bytes()
    assert envelope.is_sealed(data)
    assert b"verdict" not in data
    stored = LocalReportStore(tmp_path, key).get(summary.s3_key)
    assert stored.body.decode() == report.canonical_json
    assert stored.signature.hex() == report.signature


async def test_a_repeated_batch_returns_the_stored_reports_and_overwrites_nothing(
    stack: Stack,
) -> None:
    leases = [(task_id, 1) for task_id in list(CURRENT)[:2]]
    first = await _verify(stack, leases)
    files = {p: p.read_bytes() for p in (stack.data_dir / "reports").rglob("*.json")}
    again = await _verify(stack, leases)
    for task_id in first:
        assert again[task_id].signed_summary == first[task_id].signed_summary
    assert {p: p.read_bytes() for p in (stack.data_dir / "reports").rglob("*.json")} == files


async def test_an_attempt_below_one_is_the_tasks_own_fault(stack: Stack) -> None:
    task_id = next(iter(CURRENT))
    stack.tasks.current[task_id] = 0
    results = await _verify(stack, [(task_id, 0)])
    status = results[task_id].status
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "attempt" in status.message


async def test_too_many_tasks_is_invalid_argument_naming_the_field(stack: Stack) -> None:
    request = engine_pb2.VerifyTasksRequest(
        tasks=[engine_pb2.TaskLease(task_id=f"t{i}", attempt=1) for i in range(501)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stack.engine.VerifyTasks(request):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tasks" in (caught.value.details() or "")


async def test_tasks_service_down_makes_every_item_unavailable(tmp_path: Path) -> None:
    settings = load_settings(
        VerificationSettings,
        env={
            "DATA_DIR": str(tmp_path),
            "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
            "VERIFICATION_PROCESSES": "1",
            "TASKS_ADDR": f"127.0.0.1:{free_port()}",
            "CALL_TIMEOUT_SECONDS": "2",
            "METRICS_ENABLED": "false",
            # The engine's batches; who may call it: tests/integration/auth.
            "AUTH_ENABLED": "false",
        },
    )
    running = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            engine = engine_pb2_grpc.VerificationEngineServiceStub(channel)
            request = engine_pb2.VerifyTasksRequest(
                tasks=[engine_pb2.TaskLease(task_id=t, attempt=1) for t in list(CURRENT)[:3]]
            )
            results = [item async for item in engine.VerifyTasks(request)]
    finally:
        await running.stop(1.0)
    assert len(results) == 3
    for item in results:
        assert item.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "GetTaskInputs" in item.status.message
    assert not (tmp_path / "reports").exists()


# --- adopting an earlier attempt's report (a worker died after it was stored) ---


def _summary(item: engine_pb2.VerifyTasksResponse) -> pb.ReportSummary:
    assert item.status.code == OK, item.status
    return pb.ReportSummary.FromString(item.signed_summary.summary)


async def _redelivered(stack: Stack, task_id: str, earlier: tuple[int, ...]) -> pb.ReportSummary:
    """Attempt 1 verified and stored, its worker gone; attempt 2 started."""
    first = _summary((await _verify(stack, [(task_id, 1)]))[task_id])
    assert first.adopted_attempt == 0
    stack.tasks.current[task_id] = 2
    stack.tasks.earlier[task_id] = earlier
    return first


async def test_a_redelivered_task_adopts_its_earlier_attempts_report(stack: Stack) -> None:
    task_id = next(iter(CURRENT))
    first = await _redelivered(stack, task_id, (1,))
    item = (await _verify(stack, [(task_id, 2)]))[task_id]
    key = await stack.public.GetSigningKey(pb.GetSigningKeyRequest())
    signed = item.signed_summary
    assert verify_report_signature(
        signed.summary, bytes.fromhex(signed.signature), bytes.fromhex(key.public_key)
    )
    summary = _summary(item)
    # Signed for the new attempt, naming the adopted report and its verdict.
    assert (summary.task_id, summary.attempt, summary.adopted_attempt) == (task_id, 2, 1)
    assert summary.s3_key == f"reports/{task_id}/1.json"
    assert summary.verdict == first.verdict == pb.VERDICT_PASSED
    assert summary.report_sha256 == first.report_sha256
    # No second verification: no report under attempt 2.
    assert _reports(stack.data_dir) == [f"reports/{task_id}/1.json"]


async def test_after_an_operator_retry_the_task_is_verified_anew(stack: Stack) -> None:
    """RetryTask starts a new run: the tasks service names no earlier attempt
    from before it, and the engine never looks for one."""
    task_id = next(iter(CURRENT))
    await _redelivered(stack, task_id, ())
    summary = _summary((await _verify(stack, [(task_id, 2)]))[task_id])
    assert (summary.attempt, summary.adopted_attempt) == (2, 0)
    assert summary.s3_key == f"reports/{task_id}/2.json"
    assert _reports(stack.data_dir) == [f"reports/{task_id}/1.json", f"reports/{task_id}/2.json"]


async def test_a_stored_report_whose_signature_fails_is_not_adopted(stack: Stack) -> None:
    task_id = next(iter(CURRENT))
    store = LocalReportStore(stack.data_dir)
    await _verify(stack, [(task_id, 1)])
    genuine = store.get(f"reports/{task_id}/1.json")
    # A report under attempt 3 with attempt 1's body and a forged signature.
    store.create(f"reports/{task_id}/3.json", genuine.body, bytes(64))
    stack.tasks.current[task_id] = 4
    stack.tasks.earlier[task_id] = (3,)
    summary = _summary((await _verify(stack, [(task_id, 4)]))[task_id])
    assert (summary.attempt, summary.adopted_attempt) == (4, 0)
    assert summary.s3_key == f"reports/{task_id}/4.json"


async def test_a_stored_report_naming_another_task_is_not_adopted(stack: Stack) -> None:
    mine, other = list(CURRENT)[:2]
    store = LocalReportStore(stack.data_dir)
    await _verify(stack, [(other, 1)])
    theirs = store.get(f"reports/{other}/1.json")
    # Genuinely signed, but the other task's report, copied under mine.
    store.create(f"reports/{mine}/1.json", theirs.body, theirs.signature)
    stack.tasks.current[mine] = 2
    stack.tasks.earlier[mine] = (1,)
    summary = _summary((await _verify(stack, [(mine, 2)]))[mine])
    assert (summary.task_id, summary.attempt, summary.adopted_attempt) == (mine, 2, 0)
    assert summary.s3_key == f"reports/{mine}/2.json"


async def test_the_newest_earlier_report_is_adopted_and_a_first_attempt_looks_for_none(
    stack: Stack,
) -> None:
    task_id = next(iter(CURRENT))
    await _verify(stack, [(task_id, 1)])
    stack.tasks.current[task_id] = 2
    await _verify(stack, [(task_id, 2)])  # no earlier attempts named: its own report
    stack.tasks.current[task_id] = 3
    stack.tasks.earlier[task_id] = (1, 2)
    summary = _summary((await _verify(stack, [(task_id, 3)]))[task_id])
    assert (summary.attempt, summary.adopted_attempt) == (3, 2)


async def test_a_repeat_of_an_attempt_that_stored_its_own_report_gets_that_one(
    stack: Stack,
) -> None:
    task_id = next(iter(CURRENT))
    await _verify(stack, [(task_id, 1)])
    stack.tasks.current[task_id] = 2
    own = _summary((await _verify(stack, [(task_id, 2)]))[task_id])  # verified anew
    stack.tasks.earlier[task_id] = (1,)
    again = _summary((await _verify(stack, [(task_id, 2)]))[task_id])
    assert again == own and (again.adopted_attempt, again.attempt) == (0, 2)
