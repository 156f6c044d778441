"""Shared helpers of the verification tests: vectors, fixed times, certificates."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.verification.checks.context import AttestedQuote, CheckContext
from services.verification.eventlog import parse_event_log, replay
from services.verification.evidence import parse_evidence_json
from services.verification.model import Evidence, VerificationFlags, VerificationRequest
from services.verification.quote import parse_quote

VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors"
DCAP = VECTORS / "dcap-qvl"
DSTACK = VECTORS / "dstack"

# Times inside each collateral's window (from vectors/README.md): never the wall clock.
AT_TDX = datetime(2025, 7, 4, 10, 16, 31, tzinfo=UTC)
AT_SGX = datetime(2025, 7, 4, 10, 28, 44, tzinfo=UTC)
AT_90C06F = datetime(2026, 3, 5, 10, 50, 3, tzinfo=UTC)

# The quote-report.json vector's compose-hash and app-id event payloads.
COMPOSE_HASH = "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7"
APP_ID = "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"

HW_OS_SRC = VerificationFlags.only(["hardware", "os", "source_code"])

# Offsets into a v4 TDX quote: header 0-47, TD report 48-631, auth data size
# 632-635, then ECDSA signature (64), attestation key (64), cert data header
# (6), QE report (384), QE report signature (64), ...
OFFSET_HEADER = 10
OFFSET_TD_REPORT = 48 + 200
OFFSET_SIGNATURE = 48 + 584 + 4 + 10
OFFSET_QE_REPORT = 48 + 584 + 4 + 64 + 64 + 6 + 100


def collateral_90c06f() -> str:
    return (DCAP / "collateral_fmspc_90C06F.json").read_text()


def quote_report_evidence(**changes: Any) -> Evidence:
    evidence = parse_evidence_json((DSTACK / "quote-report.json").read_text())
    return replace(evidence, **({"collateral": collateral_90c06f()} | changes))


def quote_report_request(**changes: Any) -> VerificationRequest:
    fields: dict[str, Any] = {
        "evidence": quote_report_evidence(),
        "evaluated_at": AT_90C06F,
        "task_id": "task-1",
        "flags": HW_OS_SRC,
        "expected_compose_hash": COMPOSE_HASH,
    }
    fields.update(changes)
    return VerificationRequest(**fields)


def flip(raw: bytes, offset: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 0x01
    return bytes(out)


def event_log_with(change: dict[str, Any], event_name: str) -> str:
    events = json.loads(quote_report_evidence().event_log or "[]")
    for event in events:
        if event["event"] == event_name:
            event.update(change)
    return json.dumps(events)


def fake_context(
    report_data: bytes = bytes(64),
    *,
    evidence: Evidence | None = None,
    mr_config_id: bytes = bytes(48),
    at: datetime = AT_90C06F,
    **request_fields: Any,
) -> CheckContext:
    """A context whose 'verified' fields we choose: for function-level tests of
    logic a real quote cannot exercise (its report_data cannot be changed)."""
    base = quote_report_evidence()
    evidence = evidence or base
    events = parse_event_log(base.event_log or "[]")
    registers = replay(events)
    parsed = parse_quote(base.quote)
    fields = dict(parsed.fields)
    fields.update({f"rt_mr{i}": registers[i].hex() for i in range(4)})
    fields.update(report_data=report_data.hex(), mr_config_id=mr_config_id.hex())
    request = VerificationRequest(evidence=evidence, evaluated_at=at, **request_fields)
    return CheckContext(
        request=request,
        parsed=parsed,
        attested=AttestedQuote("UpToDate", (), "TD10", fields),
        attestation_problem="",
        collateral=None,
        events=events,
    )


def make_chain(
    domain: str = "app.example.com",
    not_before: datetime = AT_90C06F - timedelta(days=10),
    not_after: datetime = AT_90C06F + timedelta(days=80),
) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A CA and a leaf for `domain`; returns (PEM chain leaf-first, leaf key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test App CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - timedelta(days=1))
        .not_valid_after(not_after + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = leaf.public_bytes(Encoding.PEM) + ca.public_bytes(Encoding.PEM)
    return pem.decode(), leaf_key
