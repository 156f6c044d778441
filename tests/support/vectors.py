"""The real attestation vectors in ../shared/vectors, as tests use them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
DSTACK_QUOTE_REPORT = VECTORS / "dstack" / "quote-report.json"
COLLATERAL_90C06F = VECTORS / "dcap-qvl" / "collateral_fmspc_90C06F.json"
# Inside the 90C06F collateral's validity window (vectors/README.md).
DSTACK_EVALUATION_TIME = datetime(2026, 3, 5, 10, 50, 3, tzinfo=UTC)
DSTACK_EVALUATION_TIME_TEXT = "2026-03-05T10:50:03Z"


@cache
def dstack_quote_report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DSTACK_QUOTE_REPORT.read_text())
    return data


def dstack_event(name: str) -> dict[str, Any]:
    for event in json.loads(dstack_quote_report()["event_log"]):
        if event.get("event") == name:
            return dict(event)
    raise KeyError(name)


def dstack_compose_hash() -> str:
    """The compose hash the app measured (its compose-hash event's payload)."""
    return str(dstack_event("compose-hash")["event_payload"])


def dstack_app_id() -> str:
    return str(dstack_event("app-id")["event_payload"])


def dstack_evidence_json() -> dict[str, str]:
    """Inline evidence in the dstack GetQuote shape plus the matching collateral."""
    report = dstack_quote_report()
    return {
        "quote": report["quote"],
        "eventLog": report["event_log"],
        "vmConfig": report["vm_config"],
        "reportData": report["report_data"],
        "collateral": COLLATERAL_90C06F.read_text(),
    }


def dstack_create_task_json(**overrides: Any) -> dict[str, Any]:
    """A CreateTask body (proto3 JSON) that verifies and passes hardware, os and source_code."""
    body: dict[str, Any] = {
        "appId": dstack_app_id(),
        "appName": "dstack-vector",
        "appConfigType": "APP_CONFIG_TYPE_PHALA_CLOUD",
        "verificationFlags": {
            "hardware": True,
            "os": True,
            "sourceCode": True,
            "teeControlledKey": False,
            "certificateKey": False,
            "dnsCAA": False,
            "ctLog": False,
        },
        "evidence": dstack_evidence_json(),
        "expectedComposeHash": dstack_compose_hash(),
        "evaluationTime": DSTACK_EVALUATION_TIME_TEXT,
    }
    body.update(overrides)
    return body


if __name__ == "__main__":
    # `python -m tests.support.vectors`: a CreateTask body with the dstack vector
    # inline, for trying the stack by hand (README) with curl or grpcurl.
    print(json.dumps(dstack_create_task_json()))
