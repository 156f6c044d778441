"""OsImageService over gRPC with the service's real stores (S3 over HTTP via
SeaweedFS, and the embedded local folder), and the os check reading what an
operator created there: the real quote-report.json vector passes once its
image has an entry in the store, and fails again after it is deleted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from verifier.verification.v1 import engine_pb2_grpc, os_images_pb2_grpc
from verifier.verification.v1 import os_images_pb2 as pb
from verifier.verification.v1 import verification_pb2 as vpb

from services.verification.main import build_spec
from services.verification.settings import DEFAULT_OS_ALLOWLIST, VerificationSettings
from shared.config import load_settings
from shared.grpc_client import create_channel
from shared.grpc_server import start_server
from tests.support.servers import S3Server
from tests.support.vectors import dstack_compose_hash, dstack_evidence_json

pytestmark = pytest.mark.integration

VECTOR_HASH = "14ad42d0270b444eaeb53918a5a94d9b17eec7a817cd336173b17c5327541c67"
# The vector's registers (as the shipped entry has them) and VM shape, as an
# operator would enter them.
_REGISTERS = {
    k: v
    for k, v in json.loads(DEFAULT_OS_ALLOWLIST.read_text())["images"][0]["measurements"][0].items()
    if k != "vm_shape"
}
ENTRY = {
    "osImageHash": VECTOR_HASH,
    "version": "dstack-test",
    "source": "OS_IMAGE_SOURCE_OBSERVED",
    "sourceDetail": "quote-report.json",
    "measurements": [
        {
            "vmShape": {
                "cpuCount": 16,
                "memorySize": "68719476736",
                "numGpus": 1,
                "numNvswitches": 0,
                "hugepages": False,
                "pic": False,
                "qemuSinglePassAddPages": False,
                "pciHole64Size": "17592186044416",
                "qemuVersion": "9.2.1",
            },
            **_REGISTERS,
        }
    ],
}


@pytest.fixture(params=["s3", "local-folder"])
async def channel(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server
) -> AsyncIterator[grpc.aio.Channel]:
    # No shipped entries: the store is the only source, so the os check's
    # verdict follows the API calls.
    env = {
        "OS_IMAGES_SHIPPED": "false",
        "OS_IMAGES_CACHE_SECONDS": "0",
        "DATA_DIR": str(tmp_path),
        "VERIFICATION_LISTEN_ADDR": "127.0.0.1:0",
        "VERIFICATION_PROCESSES": "1",
        "HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        # The os-image API itself; who may call it: tests/integration/auth.
        "AUTH_ENABLED": "false",
    }
    if request.param == "s3":
        env |= {
            "S3_ENDPOINT": s3.endpoint,
            "S3_BUCKET": f"osi-{tmp_path.name[-8:].lower().replace('_', '-')}",
            "S3_ACCESS_KEY_ID": s3.access_key_id,
            "S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        }
    settings = load_settings(VerificationSettings, env=env)
    spec = build_spec(settings)
    running = await start_server(spec)
    try:
        async with create_channel(f"127.0.0.1:{running.port}") as ch:
            yield ch
    finally:
        await running.stop(1.0)


async def _os_status(channel: grpc.aio.Channel, task_id: str) -> tuple[int, str]:
    stub = engine_pb2_grpc.VerificationEngineServiceStub(channel)
    body = {
        "taskId": task_id,
        "attempt": 1,
        "flags": {
            "hardware": True,
            "os": True,
            "sourceCode": False,
            "teeControlledKey": False,
            "certificateKey": False,
        },
        "evidence": dstack_evidence_json(),
        "expectedComposeHash": dstack_compose_hash(),
        "evaluationTime": "2026-03-05T10:50:03Z",
    }
    response = await stub.Verify(json_format.ParseDict(body, vpb.VerifyRequest()))
    (os_check,) = [c for c in response.summary.checks if c.check == vpb.CHECK_OS]
    return os_check.status, os_check.reason


async def test_create_get_list_delete_and_the_os_check_follows(channel: grpc.aio.Channel) -> None:
    stub = os_images_pb2_grpc.OsImageServiceStub(channel)
    status, reason = await _os_status(channel, "os-before")
    assert status == vpb.CHECK_STATUS_FAILED
    assert reason == f"unknown OS image {VECTOR_HASH}"

    created = await stub.CreateOsImage(
        pb.CreateOsImageRequest(os_image=json_format.ParseDict(ENTRY, pb.OsImage()))
    )
    assert created.os_image.os_image_hash == VECTOR_HASH
    assert created.os_image.measurements[0].vm_shape.memory_size == 68719476736
    got = await stub.GetOsImage(pb.GetOsImageRequest(os_image_hash=VECTOR_HASH.upper()))
    assert got.os_image.source == pb.OS_IMAGE_SOURCE_OBSERVED
    assert got.os_image.HasField("recorded_at")
    listed = await stub.ListOsImages(pb.ListOsImagesRequest())
    assert [i.os_image_hash for i in listed.os_images] == [VECTOR_HASH]

    status, reason = await _os_status(channel, "os-after-create")
    assert status == vpb.CHECK_STATUS_PASSED, reason

    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await stub.CreateOsImage(
            pb.CreateOsImageRequest(os_image=json_format.ParseDict(ENTRY, pb.OsImage()))
        )
    assert exists.value.code() is grpc.StatusCode.ALREADY_EXISTS

    await stub.DeleteOsImage(pb.DeleteOsImageRequest(os_image_hash=VECTOR_HASH))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetOsImage(pb.GetOsImageRequest(os_image_hash=VECTOR_HASH))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND
    status, _ = await _os_status(channel, "os-after-delete")
    assert status == vpb.CHECK_STATUS_FAILED


async def test_malformed_entry_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel,
) -> None:
    stub = os_images_pb2_grpc.OsImageServiceStub(channel)
    bad = dict(ENTRY, measurements=[dict(ENTRY["measurements"][0], rtmr1="00")])  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateOsImage(
            pb.CreateOsImageRequest(os_image=json_format.ParseDict(bad, pb.OsImage()))
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "measurements[0].rtmr1" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad_hash:
        await stub.GetOsImage(pb.GetOsImageRequest(os_image_hash="../etc/passwd"))
    assert bad_hash.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    listed = await stub.ListOsImages(pb.ListOsImagesRequest())
    assert list(listed.os_images) == []
