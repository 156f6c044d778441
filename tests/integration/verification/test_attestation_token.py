"""Results other tools can consume: GetReport's attestation-result token (an
EAR-style JWT, EdDSA) checked with a JOSE library (joserfc), not our code,
against the keys of GetJwks (/.well-known/jwks.json), across a key rotation;
and the report Struct round-tripping to the signed canonical JSON.

Real data: the dstack quote-report.json vector, verified by the service with
its real stores (S3 over HTTP via SeaweedFS, and the local folder)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from joserfc import jwt
from joserfc.jwk import KeySet
from verifier.verification.v1 import engine_pb2_grpc, verification_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from services.verification.main import build_spec
from services.verification.report import canonical_json, verify_report_signature
from services.verification.settings import VerificationSettings
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import RunningServer, start_server
from shared.jsonnum import whole_numbers
from tests.support.servers import S3Server
from tests.support.vectors import dstack_app_id, dstack_compose_hash, dstack_evidence_json

pytestmark = pytest.mark.integration

# Task ids are canonical lowercase UUIDs on every route.
TOKEN_TASK = "7a3c1e00-0000-4000-9000-000000000001"
ROUND_TRIP_TASK = "7a3c1e00-0000-4000-9000-000000000002"
OLD_KEY_TASK = "7a3c1e00-0000-4000-9000-000000000003"


def _settings(tmp_path: Path, s3: S3Server | None, key: str = "key") -> VerificationSettings:
    env = {
        "DATA_DIR": str(tmp_path),
        "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
        "VERIFICATION_PROCESSES": "1",
        "HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        "SIGNING_KEY_PATH": str(tmp_path / f"{key}.pem"),
        # The token itself; who may call what: tests/integration/auth.
        "AUTH_ENABLED": "false",
    }
    if s3 is not None:
        env |= {
            "S3_ENDPOINT": s3.endpoint,
            "S3_BUCKET": f"tok-{tmp_path.name[-8:].lower().replace('_', '-')}",
            "S3_ACCESS_KEY_ID": s3.access_key_id,
            "S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        }
    return load_settings(VerificationSettings, env=env)


def _verify_request(task_id: str) -> pb.VerifyRequest:
    body = {
        "taskId": task_id,
        "appId": dstack_app_id(),
        "flags": {"teeControlledKey": False, "certificateKey": False},
        "evidence": dstack_evidence_json(),
        "expectedComposeHash": dstack_compose_hash(),
        "evaluationTime": "2026-03-05T10:50:03Z",
    }
    return json_format.ParseDict(body, pb.VerifyRequest())


@pytest.fixture(params=["s3", "local-folder"])
async def settings(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server
) -> VerificationSettings:
    return _settings(tmp_path, s3 if request.param == "s3" else None)


class _Stubs:
    """The public VerificationService, and Verify from the internal engine service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        public = verification_pb2_grpc.VerificationServiceStub(channel)
        self.Verify = engine_pb2_grpc.VerificationEngineServiceStub(channel).Verify
        self.GetReport = public.GetReport
        self.GetJwks = public.GetJwks
        self.GetSigningKey = public.GetSigningKey


async def _serve(settings: VerificationSettings) -> AsyncIterator[_Stubs]:
    running: RunningServer = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            yield _Stubs(channel)
    finally:
        await running.stop(1.0)


async def _jwks(stub: _Stubs) -> dict[str, object]:
    response = await stub.GetJwks(pb.GetJwksRequest())
    return json_format.MessageToDict(response)


async def test_token_verifies_with_a_jose_library_and_carries_the_result(
    settings: VerificationSettings,
) -> None:
    async for stub in _serve(settings):
        await stub.Verify(_verify_request(TOKEN_TASK))
        stored = await stub.GetReport(pb.GetReportRequest(task_id=TOKEN_TASK))
        jwks = await _jwks(stub)
    keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    token = jwt.decode(stored.attestation_token, keys, algorithms=["EdDSA"])
    assert token.header["alg"] == "EdDSA"
    assert token.header["kid"] == stored.key_id
    claims = token.claims
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert claims["sub"] == dstack_app_id()
    submod = claims["submods"]["dstack"]
    assert submod["ear.status"] == "affirming"
    assert submod["x-dstack.verdict"] == "passed"
    assert submod["x-dstack.checks"]["hardware"] == "passed"
    assert submod["x-dstack.checks"]["tee_controlled_key"] == "skipped"
    assert submod["x-dstack.subject"]["compose_hash"] == dstack_compose_hash()
    assert submod["x-dstack.subject"]["instance_ids"] == [
        "c3714eb66990eace777b4e664c16e09375dec4c9"
    ]
    assert submod["x-dstack.tcb_status"] == "UpToDate"
    assert submod["x-dstack.evaluated_at"] == "2026-03-05T10:50:03Z"
    assert submod["ear.trustworthiness-vector"]["hardware"] == 2
    assert (
        submod["x-dstack.report_sha256"]
        == hashlib.sha256(stored.canonical_json.encode()).hexdigest()
    )
    # A token whose payload was changed does not verify.
    header, payload, signature = stored.attestation_token.split(".")
    forged = f"{header}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    with pytest.raises(Exception):  # noqa: B017 - joserfc's own error type for a bad signature
        jwt.decode(forged, keys, algorithms=["EdDSA"])


async def test_report_struct_round_trips_to_the_signed_text(settings: VerificationSettings) -> None:
    async for stub in _serve(settings):
        await stub.Verify(_verify_request(ROUND_TRIP_TASK))
        stored = await stub.GetReport(pb.GetReportRequest(task_id=ROUND_TRIP_TASK))
        key = await stub.GetSigningKey(pb.GetSigningKeyRequest())
    document = whole_numbers(json_format.MessageToDict(stored.report))
    os_details = next(c for c in document["checks"] if c["name"] == "os")["details"]
    assert os_details["vm_shape"]["cpu_count"] == 16
    assert isinstance(os_details["vm_shape"]["cpu_count"], int)
    again = canonical_json(document)
    assert again == stored.canonical_json.encode()
    assert verify_report_signature(
        again, bytes.fromhex(stored.signature), bytes.fromhex(key.public_key)
    )
    assert json.loads(stored.canonical_json) == document


async def test_jwks_keeps_earlier_keys_after_a_rotation(tmp_path: Path) -> None:
    old_settings = _settings(tmp_path, None, key="old")
    async for stub in _serve(old_settings):
        await stub.Verify(_verify_request(OLD_KEY_TASK))
        old_token = (
            await stub.GetReport(pb.GetReportRequest(task_id=OLD_KEY_TASK))
        ).attestation_token
        old_kid = (await stub.GetSigningKey(pb.GetSigningKeyRequest())).key_id
    new_settings = replace(old_settings, signing_key_path=str(tmp_path / "new.pem"))
    async for stub in _serve(new_settings):
        jwks = await _jwks(stub)
        new_kid = (await stub.GetSigningKey(pb.GetSigningKeyRequest())).key_id
    kids = [k["kid"] for k in jwks["keys"]]  # type: ignore[index]
    assert kids[0] == new_kid and old_kid in kids and old_kid != new_kid
    # A token issued before the rotation still verifies against the published set.
    decoded = jwt.decode(old_token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])  # type: ignore[arg-type]
    assert decoded.header["kid"] == old_kid
