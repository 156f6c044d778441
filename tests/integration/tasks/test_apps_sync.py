"""The Phala Cloud app sync against a loopback HTTP server answering with stored
responses in the shape of trust-center's UpstreamAppDataSchema (data/): apps are
added, changed, and marked deleted (not removed) when they disappear; the API key
travels as a Bearer token; without a key SyncApps is FAILED_PRECONDITION."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from verifier.tasks.v1 import apps_pb2, apps_pb2_grpc

from tests.integration.tasks.conftest import Harness, fresh_database, start_harness

DATA = Path(__file__).parent / "data"
KEY = "phak_test_key"


class PhalaCloudStandIn:
    """GET /api/v1/stats/dstack_app answering the current stored response."""

    def __init__(self) -> None:
        self.body = (DATA / "phala_cloud_apps_1.json").read_bytes()
        self.authorizations: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.authorizations.append(self.headers.get("Authorization", ""))
                if self.path != "/api/v1/stats/dstack_app":
                    self.send_error(404)
                    return
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    self.send_error(401)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(stand_in.body)))
                self.end_headers()
                self.wfile.write(stand_in.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def cloud() -> Iterator[PhalaCloudStandIn]:
    stand_in = PhalaCloudStandIn()
    yield stand_in
    stand_in.close()


async def _harness(tmp: Path, cloud: PhalaCloudStandIn, **env: str) -> Harness:
    async with fresh_database("sqlite", None, tmp) as url:
        return await start_harness(
            "sqlite",
            url,
            SCHEDULER_ENABLED="false",
            PHALA_CLOUD_API_URL=cloud.url,
            APP_SYNC_INTERVAL_SECONDS="3600",
            **env,
        )


async def test_sync_adds_changes_and_marks_deleted(
    cloud: PhalaCloudStandIn, tmp_path: Path
) -> None:
    h = await _harness(tmp_path, cloud, PHALA_CLOUD_API_KEY=KEY)
    try:
        stub = apps_pb2_grpc.AppServiceStub(h.channel)
        first = await stub.SyncApps(apps_pb2.SyncAppsRequest())
        assert first.listed == 4
        assert first.deleted == 0
        apps = {a.id: a for a in (await stub.ListApps(apps_pb2.ListAppsRequest())).apps}
        assert set(apps) == {
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
            "2c26b46b68ffc68ff99b453c1d30413413422d70",
        }
        new = apps["e3b0c44298fc1c149afbf4c8996fb92427ae41e4"]
        assert new.source == apps_pb2.APP_SOURCE_PHALA_CLOUD
        assert new.name == "oracle-node"
        # dstack 0.5.3+: the app is its own contract, behind the gateway's suffix.
        assert new.contract_address == "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4"
        assert new.model_or_domain == "dstack-base-prod7.phala.network"
        legacy = apps["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"]
        assert legacy.contract_address == "0x1234567890abcdef1234567890abcdef12345678"
        assert legacy.model_or_domain == "legacy.phala.network"
        assert cloud.authorizations[-1] == f"Bearer {KEY}"

        again = await stub.SyncApps(apps_pb2.SyncAppsRequest())
        assert (again.created, again.updated, again.deleted) == (0, 0, 0)

        cloud.body = (DATA / "phala_cloud_apps_2.json").read_bytes()
        second = await stub.SyncApps(apps_pb2.SyncAppsRequest())
        assert (second.listed, second.created, second.updated, second.deleted) == (2, 0, 1, 1)
        gone = await stub.GetApp(
            apps_pb2.GetAppRequest(id="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")
        )
        assert gone.app.state == apps_pb2.APP_STATE_DELETED  # kept, not removed
        renamed = await stub.GetApp(
            apps_pb2.GetAppRequest(id="2c26b46b68ffc68ff99b453c1d30413413422d70")
        )
        assert renamed.app.name == "agent-runner-v2"
    finally:
        cloud.body = (DATA / "phala_cloud_apps_1.json").read_bytes()
        await h.close()


async def test_sync_without_a_key_is_failed_precondition(
    cloud: PhalaCloudStandIn, tmp_path: Path
) -> None:
    h = await _harness(tmp_path, cloud)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apps_pb2_grpc.AppServiceStub(h.channel).SyncApps(apps_pb2.SyncAppsRequest())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "PHALA_CLOUD_API_KEY" in (caught.value.details() or "")
    finally:
        await h.close()


def test_stored_responses_have_the_upstream_fields() -> None:
    body = json.loads((DATA / "phala_cloud_apps_1.json").read_text())
    for item in body["data"][:3]:
        for field in ("dstack_app_id", "app_name", "base_image", "gateway_domain_suffix"):
            assert field in item
