"""The apps resource over REST through the gateway (generic transcoding of the
google.api.http annotations in apps.proto), on the real stack."""

from __future__ import annotations

import uuid

import httpx

from tests.integration.gateway.stack import Stack


async def test_apps_crud_schedules_and_history_over_rest(gateway_stack: Stack) -> None:
    app_id = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=gateway_stack.base_url, timeout=30) as http:
        created = await http.post(
            "/api/v1/apps",
            json={
                "id": app_id,
                "name": "rest-app",
                "appConfigType": "phala_cloud",
                "modelOrDomain": "rest.phala.network",
                "schedule": {"intervalSeconds": "3600", "cron": ""},
            },
        )
        assert created.status_code == 200, created.text
        assert created.json()["id"] == app_id
        assert created.json()["state"] == "enabled"

        got = await http.get(f"/api/v1/apps/{app_id}")
        assert got.status_code == 200
        assert got.json()["app"]["name"] == "rest-app"
        assert "trustTask" not in got.json()

        patched = await http.patch(f"/api/v1/apps/{app_id}", json={"name": "renamed"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "renamed"
        assert patched.json()["modelOrDomain"] == ""  # no mask: every settable field

        paused = await http.post(f"/api/v1/apps/{app_id}:pauseSchedule", json={})
        assert paused.status_code == 200 and paused.json()["schedulePaused"] is True
        schedules = await http.get("/api/v1/schedules", params={"pageSize": 500})
        assert app_id in {a["id"] for a in schedules.json()["apps"]}

        triggered = await http.post(f"/api/v1/apps/{app_id}:triggerSchedule", json={})
        assert triggered.status_code == 200, triggered.text
        task = triggered.json()
        assert task["createdBy"] == "scheduler" and task["appId"] == app_id
        again = await http.post(f"/api/v1/apps/{app_id}:triggerSchedule", json={})
        assert again.status_code == 400  # FAILED_PRECONDITION: its task still runs

        history = await http.get(f"/api/v1/apps/{app_id}/tasks")
        assert [t["id"] for t in history.json()["tasks"]] == [task["id"]]

        bad = await http.post(
            "/api/v1/apps",
            json={
                "id": uuid.uuid4().hex,
                "appConfigType": "redpill",
                "modelOrDomain": "org/model",
                "schedule": {"cron": "never"},
            },
        )
        assert bad.status_code == 400
        assert "schedule.cron" in bad.text

        deleted = await http.delete(f"/api/v1/apps/{app_id}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
        missing = await http.get(f"/api/v1/apps/{'0' * 40}")
        assert missing.status_code == 404
