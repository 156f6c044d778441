"""The verification service over gRPC with its real stores: S3 over HTTP
(SeaweedFS) and the embedded local folder. Verify (VerificationEngineService)
writes each report once under its task and attempt; GetReport and
GetSigningKey (VerificationService) read them back, checked offline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from verifier.verification.v1 import engine_pb2_grpc, verification_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from services.verification.main import build_spec
from services.verification.report import canonical_json, verify_report_signature
from services.verification.s3 import s3_client
from services.verification.settings import VerificationSettings
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import RunningServer, start_server
from tests.support.servers import S3Server, free_port
from tests.support.vectors import (
    dstack_app_id,
    dstack_compose_hash,
    dstack_evidence_json,
)

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, s3: S3Server | None) -> VerificationSettings:
    env = {
        "DATA_DIR": str(tmp_path),
        "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
        "VERIFICATION_PROCESSES": "1",
        "HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        "AUTH_ENABLED": "false",
    }
    if s3 is not None:
        env |= {
            "S3_ENDPOINT": s3.endpoint,
            "S3_BUCKET": f"reports-{tmp_path.name[-8:].lower().replace('_', '-')}",
            "S3_ACCESS_KEY_ID": s3.access_key_id,
            "S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        }
    return load_settings(VerificationSettings, env=env)


def _verify_request(task_id: str, **overrides: object) -> pb.VerifyRequest:
    body: dict[str, object] = {
        "taskId": task_id,
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
        "evaluationTime": "2026-03-05T10:50:03Z",
    }
    body.update(overrides)
    return json_format.ParseDict(body, pb.VerifyRequest())


# Task ids are canonical lowercase UUIDs on every route, GetReport included.
TASK_VECTOR = "7a3c1e00-0000-4000-8000-000000000001"
TASK_ROTATION = "7a3c1e00-0000-4000-8000-000000000002"
NEVER_VERIFIED = "7a3c1e00-0000-4000-8000-000000000003"
TASK_TWICE = "7a3c1e00-0000-4000-8000-000000000004"
TASK_RETRIED = "7a3c1e00-0000-4000-8000-000000000005"
TASK_SIGNED = "7a3c1e00-0000-4000-8000-000000000006"


@dataclass
class Stubs:
    """Both faces of one running verification service."""

    public: verification_pb2_grpc.VerificationServiceStub
    engine: engine_pb2_grpc.VerificationEngineServiceStub

    # The public face's RPCs, so tests read `verification.GetReport(...)`.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.public, name)


@pytest.fixture(params=["s3", "local-folder"])
async def verification(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server
) -> AsyncIterator[Stubs]:
    settings = _settings(tmp_path, s3 if request.param == "s3" else None)
    running: RunningServer = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            yield Stubs(
                verification_pb2_grpc.VerificationServiceStub(channel),
                engine_pb2_grpc.VerificationEngineServiceStub(channel),
            )
    finally:
        await running.stop(1.0)


async def test_verify_the_dstack_vector_passes_and_the_signed_report_reads_back(
    verification: Stubs,
) -> None:
    response = await verification.engine.Verify(_verify_request(TASK_VECTOR, attempt=1))
    summary = response.summary
    assert summary.verdict == pb.VERDICT_PASSED, summary
    statuses = {c.check: c.status for c in summary.checks}
    assert statuses[pb.CHECK_HARDWARE] == pb.CHECK_STATUS_PASSED
    assert statuses[pb.CHECK_OS] == pb.CHECK_STATUS_PASSED
    assert statuses[pb.CHECK_SOURCE_CODE] == pb.CHECK_STATUS_PASSED
    assert statuses[pb.CHECK_TEE_CONTROLLED_KEY] == pb.CHECK_STATUS_SKIPPED
    assert summary.tcb_status == "UpToDate"
    assert summary.s3_key == f"reports/{TASK_VECTOR}/1.json"
    assert (summary.task_id, summary.attempt) == (TASK_VECTOR, 1)

    stored = await verification.GetReport(pb.GetReportRequest(task_id=TASK_VECTOR))
    key = await verification.GetSigningKey(pb.GetSigningKeyRequest())
    body = stored.canonical_json.encode()
    assert verify_report_signature(
        body, bytes.fromhex(stored.signature), bytes.fromhex(key.public_key)
    )
    assert verify_report_signature(
        body, bytes.fromhex(stored.signature), key.public_key_pem.encode()
    )
    assert not verify_report_signature(
        body.replace(b"passed", b"failed", 1),
        bytes.fromhex(stored.signature),
        bytes.fromhex(key.public_key),
    )
    document = json.loads(body)
    assert canonical_json(document) == body
    assert document["verdict"] == "passed"
    assert document["task_id"] == TASK_VECTOR
    # The signed report names its key, and GetReport says the same.
    assert document["signing_key_id"] == stored.key_id == key.key_id


async def test_report_names_the_key_that_signed_it_after_a_key_rotation(tmp_path: Path) -> None:
    async def serve_with_key(name: str) -> RunningServer:
        settings = _settings(tmp_path, None)
        settings = replace(settings, signing_key_path=str(tmp_path / f"{name}.pem"))
        return await start_server(build_spec(settings))

    first = await serve_with_key("old-key")
    try:
        async with create_channel(f"127.0.0.1:{first.port}") as channel:
            stub = verification_pb2_grpc.VerificationServiceStub(channel)
            engine = engine_pb2_grpc.VerificationEngineServiceStub(channel)
            await engine.Verify(_verify_request(TASK_ROTATION))
            old_key = await stub.GetSigningKey(pb.GetSigningKeyRequest())
    finally:
        await first.stop(1.0)
    rotated = await serve_with_key("new-key")  # same report folder, a new key
    try:
        async with create_channel(f"127.0.0.1:{rotated.port}") as channel:
            stub = verification_pb2_grpc.VerificationServiceStub(channel)
            stored = await stub.GetReport(pb.GetReportRequest(task_id=TASK_ROTATION))
            new_key = await stub.GetSigningKey(pb.GetSigningKeyRequest())
    finally:
        await rotated.stop(1.0)
    assert new_key.key_id != old_key.key_id
    assert stored.key_id == old_key.key_id
    body, signature = stored.canonical_json.encode(), bytes.fromhex(stored.signature)
    assert verify_report_signature(body, signature, bytes.fromhex(old_key.public_key))
    assert not verify_report_signature(body, signature, bytes.fromhex(new_key.public_key))


async def test_a_wrong_compose_hash_is_a_failed_verdict_not_an_error(
    verification: Stubs,
) -> None:
    response = await verification.engine.Verify(
        _verify_request("task-wrong-compose", expectedComposeHash="00" * 32)
    )
    assert response.summary.verdict == pb.VERDICT_FAILED
    source = next(c for c in response.summary.checks if c.check == pb.CHECK_SOURCE_CODE)
    assert source.status == pb.CHECK_STATUS_FAILED
    assert "compose" in source.reason.lower()


@pytest.mark.parametrize(
    ("evidence_change", "field"),
    [
        ({"quote": "abc"}, "quote"),
        ({"quote": "00" * 40}, "quote"),
        ({"eventLog": "not json"}, "event_log"),
    ],
)
async def test_malformed_evidence_is_invalid_argument_naming_the_field(
    verification: Stubs,
    evidence_change: dict[str, str],
    field: str,
) -> None:
    evidence = dstack_evidence_json() | evidence_change
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await verification.engine.Verify(_verify_request("task-bad", evidence=evidence))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_report_of_an_unknown_task_is_not_found(
    verification: Stubs,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await verification.GetReport(pb.GetReportRequest(task_id=NEVER_VERIFIED))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as traversal:
        await verification.GetReport(pb.GetReportRequest(task_id="../../etc/passwd"))
    assert traversal.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_summary_is_signed_over_its_bytes_with_the_published_key(
    verification: Stubs,
) -> None:
    response = await verification.engine.Verify(_verify_request(TASK_SIGNED, attempt=2))
    signed = response.signed_summary
    key = await verification.GetSigningKey(pb.GetSigningKeyRequest())
    assert signed.key_id == key.key_id
    public = bytes.fromhex(key.public_key)
    assert verify_report_signature(signed.summary, bytes.fromhex(signed.signature), public)
    summary = pb.ReportSummary.FromString(signed.summary)
    assert summary == response.summary
    assert (summary.task_id, summary.attempt, summary.signing_key_id) == (
        TASK_SIGNED,
        2,
        key.key_id,
    )
    forged = pb.ReportSummary()
    forged.CopyFrom(summary)
    forged.verdict = pb.VERDICT_FAILED
    assert not verify_report_signature(
        forged.SerializeToString(deterministic=True), bytes.fromhex(signed.signature), public
    )


async def test_a_second_verify_of_the_same_attempt_returns_the_first_report(
    verification: Stubs,
) -> None:
    first = await verification.engine.Verify(_verify_request(TASK_TWICE, attempt=1))
    # Other evidence for the same task and attempt: the stored report stands.
    again = await verification.engine.Verify(
        _verify_request(TASK_TWICE, attempt=1, expectedComposeHash="00" * 32)
    )
    assert again.summary == first.summary
    assert again.summary.verdict == pb.VERDICT_PASSED
    assert again.signed_summary == first.signed_summary
    stored = await verification.GetReport(pb.GetReportRequest(task_id=TASK_TWICE, attempt=1))
    assert json.loads(stored.canonical_json)["verdict"] == "passed"


async def test_get_report_returns_the_latest_attempt_or_the_one_asked_for(
    verification: Stubs,
) -> None:
    await verification.engine.Verify(_verify_request(TASK_RETRIED, attempt=1))
    await verification.engine.Verify(
        _verify_request(TASK_RETRIED, attempt=2, expectedComposeHash="00" * 32)
    )
    latest = await verification.GetReport(pb.GetReportRequest(task_id=TASK_RETRIED))
    assert latest.s3_key == f"reports/{TASK_RETRIED}/2.json"
    assert json.loads(latest.canonical_json)["verdict"] == "failed"
    assert json.loads(latest.canonical_json)["attempt"] == 2
    first = await verification.GetReport(pb.GetReportRequest(task_id=TASK_RETRIED, attempt=1))
    assert json.loads(first.canonical_json)["verdict"] == "passed"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await verification.GetReport(pb.GetReportRequest(task_id=TASK_RETRIED, attempt=3))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_pool_stores_reports_with_the_configured_server_side_encryption(
    tmp_path: Path, s3: S3Server
) -> None:
    """The pool's processes make their own store client from the same
    settings: S3_SSE reaches their PUTs."""
    settings = replace(_settings(tmp_path, s3), s3_sse="AES256")
    running = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            engine = engine_pb2_grpc.VerificationEngineServiceStub(channel)
            summary = (await engine.Verify(_verify_request(TASK_VECTOR, attempt=1))).summary
    finally:
        await running.stop(1.0)
    client = s3_client(settings.report_store)
    head = client.head_object(Bucket=summary.s3_bucket, Key=summary.s3_key)
    assert head["ServerSideEncryption"] == "AES256"
    assert len(bytes.fromhex(head["Metadata"]["signature"])) == 64


def test_verify_is_not_on_the_public_service() -> None:
    assert "Verify" not in pb.DESCRIPTOR.services_by_name["VerificationService"].methods_by_name


async def test_store_faults_are_unavailable_for_get_report_and_verify(tmp_path: Path) -> None:
    down = S3Server(f"http://127.0.0.1:{free_port()}", "test", "test")
    running = await start_server(build_spec(_settings(tmp_path, down)))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            public = verification_pb2_grpc.VerificationServiceStub(channel)
            engine = engine_pb2_grpc.VerificationEngineServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as report:
                await public.GetReport(pb.GetReportRequest(task_id=TASK_VECTOR))
            with pytest.raises(grpc.aio.AioRpcError) as verify:
                await engine.Verify(_verify_request(TASK_VECTOR, attempt=1))
    finally:
        await running.stop(1.0)
    assert report.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "listing the task's reports failed" in (report.value.details() or "")
    assert verify.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "storing the report failed" in (verify.value.details() or "")
