"""The real Phala Cloud fetch path, end to end through VerificationService.

A loopback HTTP server serves a recorded attestations response (the API's
shape, the public dstack vector's real quote standing in for every part: see
tests/unit/verification/phala_recorded.py). The service is configured only
through its settings, as an operator would: PHALA_CLOUD_API_URL (bare base),
ALLOWED_FETCH_HOSTS and FETCH_ALLOW_PRIVATE_NETWORKS; URL building, the SSRF
guard, the size limit and the parsing all run as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from verifier.verification.v1 import engine_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from services.verification.main import build_spec
from services.verification.settings import VerificationSettings
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import start_server
from tests.unit.verification.phala_recorded import vector_system_info
from tests.unit.verification.recorded_http import recorded_server
from tests.unit.verification.support import APP_ID, COMPOSE_HASH, DCAP

pytestmark = pytest.mark.integration


@pytest.fixture()
def phala_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    routes = {f"/api/v1/apps/{APP_ID}/attestations": (200, vector_system_info())}
    with recorded_server(routes) as served:
        yield served


@asynccontextmanager
async def _service(
    tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[engine_pb2_grpc.VerificationEngineServiceStub]:
    settings = load_settings(
        VerificationSettings,
        env={
            "DATA_DIR": str(tmp_path),
            "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
            "VERIFICATION_PROCESSES": "1",
            "AUTH_ENABLED": "false",
            "COLLATERAL_DIR": str(DCAP),
            **env,
        },
    )
    running = await start_server(build_spec(settings))
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as channel:
            yield engine_pb2_grpc.VerificationEngineServiceStub(channel)
    finally:
        await running.stop(1.0)


def _request(task_id: str) -> pb.VerifyRequest:
    return json_format.ParseDict(
        {
            "taskId": task_id,
            "attempt": 1,
            "appId": APP_ID,
            "appConfigType": "APP_CONFIG_TYPE_PHALA_CLOUD",
            "flags": {
                "hardware": True,
                "os": True,
                "sourceCode": True,
                "teeControlledKey": False,
                "certificateKey": False,
            },
            "expectedComposeHash": COMPOSE_HASH,
            "evaluationTime": "2026-03-05T10:50:03Z",
        },
        pb.VerifyRequest(),
    )


async def test_fetched_chain_is_verified_part_by_part(
    tmp_path: Path, phala_api: tuple[str, list[dict[str, Any]]]
) -> None:
    base, log = phala_api
    env = {
        "PHALA_CLOUD_API_URL": base,
        "ALLOWED_FETCH_HOSTS": "127.0.0.1",
        "FETCH_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
    }
    async with _service(tmp_path, env) as verification:
        response = await verification.Verify(_request("chain-fetch-1"))
    # The path is added once to the bare base.
    assert [entry["path"] for entry in log] == [f"/api/v1/apps/{APP_ID}/attestations"]
    summary = response.summary
    parts: dict[str, dict[int, pb.CheckResult]] = {}
    for result in summary.part_checks:
        parts.setdefault(result.part, {})[result.check] = result
    assert list(parts) == ["kms", "app/instance:i-1", "app/instance:i-2", "gateway"]
    for name, checks in parts.items():
        assert checks[pb.CHECK_HARDWARE].status == pb.CHECK_STATUS_PASSED, name
    # Real quotes cannot make the chain pass (phala_recorded.py says why): the
    # summary says which part failed which check.
    assert summary.verdict == pb.VERDICT_FAILED
    source = next(c for c in summary.checks if c.check == pb.CHECK_SOURCE_CODE)
    assert source.status == pb.CHECK_STATUS_FAILED and source.part == ""
    assert "kms: " in source.reason and "app/instance:i-1: " in source.reason
    assert "names 'local-sgx', not the KMS" in source.reason


async def test_loopback_api_is_refused_unless_its_network_is_allowed(
    tmp_path: Path, phala_api: tuple[str, list[dict[str, Any]]]
) -> None:
    base, log = phala_api
    env = {"PHALA_CLOUD_API_URL": base, "ALLOWED_FETCH_HOSTS": "127.0.0.1"}
    async with _service(tmp_path, env) as verification:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await verification.Verify(_request("chain-fetch-2"))
    assert caught.value.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "not globally routable" in (caught.value.details() or "")
    assert log == []  # refused before any request was sent
