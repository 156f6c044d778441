"""Attestation-result tokens: a JWT in the spirit of IETF EAR (draft-ietf-rats-ear).

Built from a stored, signed report so token and report always agree; signed
EdDSA (Ed25519) with the service's report key, whose public half
`/.well-known/jwks.json` publishes under the same key id (`kid`). Relying
parties check it with any JOSE library. Claims:

- `eat_profile` (the EAR profile), `iat`, `ear.verifier-id`, `sub` (app id),
  `jti` (the report's sha256);
- `submods.dstack`: `ear.status` (affirming when the verdict passed,
  contraindicated when a check failed, none when checks only errored),
  `ear.trustworthiness-vector` (AR4SI tiers for the checks that ran), and
  `x-dstack.*` claims: verdict, each check's status, subject (app id,
  compose hash, instance ids), TCB status and advisories, evaluation time,
  report digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .report import key_id, public_key_bytes

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
SUBMOD = "dstack"
# AR4SI trustworthiness claims per check: (claim, value when passed, when failed).
# Tiers: 2-31 affirming, 32-95 warning, 96-127 contraindicated.
_VECTOR = {
    "hardware": ("hardware", 2, 97),
    "os": ("executables", 2, 33),
    "source_code": ("configuration", 2, 96),
    "tee_controlled_key": ("instance-identity", 2, 96),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _subject(report: dict[str, Any]) -> dict[str, Any]:
    request = report.get("request") or {}
    details = {c.get("name"): c.get("details") or {} for c in report.get("checks", [])}
    source = details.get("source_code", {})
    instance_ids = sorted(
        {
            str(value)
            for value in (source.get("instance_id"), *(source.get("instance_ids") or []))
            if value
        }
    )
    return {
        "app_id": source.get("app_id") or request.get("app_id", ""),
        "compose_hash": source.get("compose_hash", ""),
        "instance_ids": instance_ids,
    }


def _status(report: dict[str, Any]) -> str:
    if report.get("verdict") == "passed":
        return "affirming"
    if any(c.get("status") == "failed" for c in report.get("checks", [])):
        return "contraindicated"
    return "none"


def claims(report: dict[str, Any], report_body: bytes, issued_at: datetime) -> dict[str, Any]:
    """The token's claims for a stored report (`report_body` the signed canonical JSON)."""
    statuses = {str(c.get("name")): str(c.get("status")) for c in report.get("checks", [])}
    vector: dict[str, int] = {}
    for check, (claim, good, bad) in _VECTOR.items():
        if statuses.get(check) == "passed":
            vector[claim] = good
        elif statuses.get(check) == "failed":
            vector[claim] = bad
    subject = _subject(report)
    digest = hashlib.sha256(report_body).hexdigest()
    submod: dict[str, Any] = {
        "ear.status": _status(report),
        "ear.trustworthiness-vector": vector,
        "x-dstack.verdict": report.get("verdict", ""),
        "x-dstack.checks": statuses,
        "x-dstack.subject": subject,
        "x-dstack.tcb_status": report.get("tcb_status", ""),
        "x-dstack.advisory_ids": list(report.get("advisory_ids", [])),
        "x-dstack.evaluated_at": report.get("evaluated_at", ""),
        "x-dstack.report_sha256": digest,
        "x-dstack.task_id": report.get("task_id", ""),
    }
    body: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": int(issued_at.timestamp()),
        "ear.verifier-id": {
            "developer": "verifier.verification.v1",
            "build": str(report.get("verifier_version", "")),
        },
        "jti": digest,
        "submods": {SUBMOD: submod},
    }
    if subject["app_id"]:
        body["sub"] = subject["app_id"]
    return body


def sign_token(payload: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """A compact JWS (RFC 7515) with alg EdDSA (RFC 8037) and our key id."""
    header = {"alg": "EdDSA", "typ": "JWT", "kid": key_id(public_key_bytes(key))}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        for part in (header, payload)
    )
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def attestation_token(
    report: dict[str, Any], report_body: bytes, key: Ed25519PrivateKey, issued_at: datetime
) -> str:
    return sign_token(claims(report, report_body, issued_at), key)


def jwk(public_key: bytes) -> dict[str, str]:
    """An Ed25519 public key as a JWK (RFC 8037), kid = our key id."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(public_key),
        "kid": key_id(public_key),
        "alg": "EdDSA",
        "use": "sig",
    }
