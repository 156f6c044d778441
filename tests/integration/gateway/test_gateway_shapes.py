"""A message field given in the wrong JSON shape gets a 400 that names the field and
the shape it expects (`verificationFlags` as a string is the usual slip)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.gateway.stack import Stack
from tests.support.vectors import dstack_create_task_json


@pytest.mark.parametrize("flags", ["hardware", ["hardware", "os"], 1])
async def test_verification_flags_not_an_object_names_the_expected_shape(
    gateway_stack: Stack, flags: object
) -> None:
    async with httpx.AsyncClient(base_url=gateway_stack.base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/tasks", json=dstack_create_task_json(verificationFlags=flags)
        )
    assert response.status_code == 400
    body = response.json()
    assert body["message"].startswith("verificationFlags: expected a JSON object")
    assert '"hardware": true' in body["message"]
    assert "sourceCode" in body["message"] and "dnsCAA" in body["message"]


async def test_a_nested_message_in_the_wrong_shape_names_its_path(gateway_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=gateway_stack.base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/apps",
            json={"id": "ab" * 10, "appConfigType": "phala_cloud", "schedule": "daily"},
        )
    assert response.status_code == 400
    assert response.json()["message"].startswith("app.schedule: expected a JSON object (Schedule)")
