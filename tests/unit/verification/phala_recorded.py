"""Phala Cloud attestations responses of the API's shape, for tests.

The shape is trust-center's SystemInfoSchema (packages/verifier/src/schemas.ts).
The quotes are real where the test runs dcap-qvl: the public dstack vector
(../shared/vectors/dstack/quote-report.json, UpToDate at 2026-03-05 with the
90C06F collateral) stands in for every part, the app's instances, the KMS and
the gateway alike, since no public KMS or gateway quote comes with collateral.
Its key-provider event is local-sgx and no preimage of its compose hash is
published, so a chain of real quotes cannot pass: those tests pin the
failures. `SyntheticChain` builds parts whose event logs we write (a KMS key
provider, a known compose) and an attestor standing in for dcap-qvl, for the
chain logic a real quote cannot exercise.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.verification.chain import ratls_report_data
from services.verification.checks.context import AttestedQuote
from services.verification.collateral import CollateralBundle
from services.verification.engine import VerificationEngine
from services.verification.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    parse_event_log,
    replay,
    runtime_event_digest,
)
from services.verification.quote import ParsedQuote

from .support import APP_ID, DSTACK

VECTOR: dict[str, Any] = json.loads((DSTACK / "quote-report.json").read_text())
VECTOR_EVENTS: list[dict[str, Any]] = json.loads(VECTOR["event_log"])
GATEWAY_APP_ID = "a" * 40
REPORT_DATA_OFFSET = 48 + 520  # v4 quote: header, then the TD report up to report_data


def instance(
    quote: str = VECTOR["quote"],
    events: Any = None,
    new_format: bool = False,
    compose: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    events = VECTOR_EVENTS if events is None else events
    item: dict[str, Any] = {"quote": quote, "image_version": "dstack-0.5.3", **extra}
    if new_format:  # the newer API: the event log inside tcb_info
        item["tcb_info"] = {
            "mrtd": "",
            "rootfs_hash": None,
            "rtmr0": "",
            "rtmr1": "",
            "rtmr2": "",
            "rtmr3": "",
            "event_log": events,
            "app_compose": compose,
        }
    else:
        item["eventlog"] = events
    return item


def guest_agent_info(
    app_id: str,
    compose: str,
    quote: str | None = VECTOR["quote"],
    events: Any = None,
    extra_quotes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """GuestAgentInfoSchema: the KMS's or the gateway's guest agent, as the API reports it."""
    certs: list[dict[str, Any]] = [
        {
            "subject": {
                "common_name": "kms.example",
                "organization": None,
                "country": None,
                "state": None,
                "locality": None,
            },
            "issuer": {"common_name": "Dstack KMS CA", "organization": "Dstack", "country": None},
            "serial_number": "01",
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2027-01-01T00:00:00Z",
            "version": "3",
            "fingerprint": "00",
            "signature_algorithm": "ecdsa-with-SHA256",
            "sans": None,
            "is_ca": False,
            "position_in_chain": 0,
            "quote": quote,
            "app_id": app_id,
            "cert_usage": "app",
        },
        *(
            {"is_ca": True, "position_in_chain": i + 1, "quote": q, "subject": {}, "issuer": {}}
            for i, q in enumerate(extra_quotes)
        ),
    ]
    return {
        "app_id": app_id,
        "instance_id": "",
        "app_name": "dstack-kms",
        "device_id": "",
        "public_logs": True,
        "public_sysinfo": True,
        "mr_aggregated": "",
        "os_image_hash": None,
        "mr_key_provider": None,
        "key_provider_info": "{}",
        "compose_hash": "",
        "vm_config": VECTOR["vm_config"],
        "tcb_info": {
            "mrtd": "",
            "rootfs_hash": None,
            "rtmr0": "",
            "rtmr1": "",
            "rtmr2": "",
            "rtmr3": "",
            "event_log": VECTOR_EVENTS if events is None else events,
            "app_compose": compose,
        },
        "app_certificates": certs,
    }


def system_info(
    instances: list[dict[str, Any]],
    kms: dict[str, Any] | None,
    gateway: dict[str, Any] | None,
    gateway_app_id: str = GATEWAY_APP_ID,
    app_id: str = APP_ID,
) -> dict[str, Any]:
    return {
        "app_id": app_id,
        "contract_address": "",
        "kms_info": {
            "contract_address": "",
            "chain_id": None,
            "version": "v0.5.3",
            "url": "https://kms.example",
            "gateway_app_id": gateway_app_id,
            "gateway_app_url": "https://gateway.example",
        },
        "instances": instances,
        "kms_guest_agent_info": kms,
        "gateway_guest_agent_info": gateway,
    }


def vector_system_info(**changes: Any) -> dict[str, Any]:
    """Every part the real vector: two running instances, one stopped, KMS, gateway."""
    fields: dict[str, Any] = {
        "instances": [
            instance(instance_id="i-1"),
            {"quote": None, "eventlog": None},
            instance(instance_id="i-2", new_format=True),
        ],
        "kms": guest_agent_info("kms" + "0" * 37, '{"name":"kms"}'),
        "gateway": guest_agent_info(GATEWAY_APP_ID, '{"name":"gateway"}'),
    }
    fields.update(changes)
    return system_info(**fields)


# ---- synthetic parts: event logs we write, an attestor standing in for dcap-qvl


def new_spki() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _runtime(name: str, payload: bytes) -> dict[str, Any]:
    return {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT_TYPE,
        "digest": runtime_event_digest(name, payload).hex(),
        "event": name,
        "event_payload": payload.hex(),
    }


def synthetic_log(app_id: str, compose: str, key_provider: dict[str, str]) -> list[dict[str, Any]]:
    boot = [e for e in VECTOR_EVENTS if e["imr"] != 3]
    return [
        *boot,
        _runtime("system-preparing", b""),
        _runtime("app-id", bytes.fromhex(app_id)),
        _runtime("compose-hash", hashlib.sha256(compose.encode()).digest()),
        _runtime("instance-id", bytes(20)),
        _runtime("boot-mr-done", b""),
        _runtime("key-provider", json.dumps(key_provider, separators=(",", ":")).encode()),
        _runtime("system-ready", b""),
    ]


class SyntheticChain:
    """Quotes that differ in report_data only, each standing for one event log; the
    attestor returns the registers that log replays to (as if dcap-qvl verified them)."""

    def __init__(self) -> None:
        self.registers: dict[str, dict[str, str]] = {}
        self.status: dict[str, str] = {}

    def quote(
        self,
        events: list[dict[str, Any]],
        report_data: bytes,
        status: str = "UpToDate",
        **fields: str,
    ) -> str:
        raw = bytearray(bytes.fromhex(VECTOR["quote"]))
        raw[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] = report_data.ljust(64, b"\0")
        replayed = replay(parse_event_log(json.dumps(events)))
        self.registers[report_data.ljust(64, b"\0").hex()] = {
            **{f"rt_mr{i}": r.hex() for i, r in enumerate(replayed)},
            **fields,
        }
        self.status[report_data.ljust(64, b"\0").hex()] = status
        return raw.hex()

    def engine(self, **settings: Any) -> VerificationEngine:
        from services.verification.settings import VerificationSettings

        chain = self

        class Engine(VerificationEngine):
            def attest_quote(
                self, quote: bytes, parsed: ParsedQuote, inline: str | None, at: datetime
            ) -> tuple[AttestedQuote | None, str, CollateralBundle | None]:
                key = str(parsed.fields["report_data"])
                fields = dict(parsed.fields) | chain.registers[key]
                return AttestedQuote(chain.status[key], (), "TD10", fields), "", None

        return Engine(VerificationSettings(**settings))


def passing_chain(chain: SyntheticChain, kms_key: bytes, *, bind_key: bool) -> dict[str, Any]:
    """A response whose every part passes hardware, os and source_code, the app's key
    provider naming `kms_key`; the KMS certificate quote binds it if `bind_key`."""
    provider = {"name": "kms", "id": kms_key.hex()}
    app_compose, kms_compose, gw_compose = '{"app":1}', '{"kms":1}', '{"gateway":1}'
    kms_events = synthetic_log("cc" * 20, kms_compose, {"name": "none", "id": ""})
    gw_events = synthetic_log(GATEWAY_APP_ID, gw_compose, provider)
    kms_report = ratls_report_data(kms_key) if bind_key else b"kms"
    instances = [
        instance(
            chain.quote(synthetic_log(APP_ID, app_compose, provider), f"app{i}".encode()),
            synthetic_log(APP_ID, app_compose, provider),
            new_format=True,
            compose=app_compose,
            instance_id=f"i-{i}",
        )
        for i in (1, 2)
    ]
    return system_info(
        instances=instances,
        kms=guest_agent_info(
            "cc" * 20, kms_compose, chain.quote(kms_events, kms_report), kms_events
        ),
        gateway=guest_agent_info(
            GATEWAY_APP_ID, gw_compose, chain.quote(gw_events, b"gw"), gw_events
        ),
    )
