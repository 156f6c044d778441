"""Canonical, signed reports and where they are stored."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from services.verification.engine import VerificationEngine
from services.verification.report import (
    canonical_json,
    key_id,
    load_or_create_signing_key,
    public_key_bytes,
    public_key_pem,
    sign_report,
    verify_report_signature,
)

from .support import quote_report_request


def test_canonical_json_sorts_keys_without_whitespace() -> None:
    assert canonical_json({"b": 1, "a": ["é", {"d": 2, "c": None}]}) == (
        '{"a":["é",{"c":null,"d":2}],"b":1}'.encode()
    )


def test_full_report_holds_checks_quote_digests_timings_and_version(
    engine: VerificationEngine,
) -> None:
    doc = engine.verify(quote_report_request()).to_dict()
    assert [c["name"] for c in doc["checks"]][:3] == ["hardware", "os", "source_code"]
    assert doc["quote"]["fields"]["rt_mr3"].startswith("0f787c38")
    assert doc["tcb_status"] == "UpToDate"
    assert set(doc["evidence_digests"]) >= {"quote_sha256", "event_log_sha256", "collateral_sha256"}
    assert {"attestation", "hardware", "total"} <= set(doc["timings_ms"])
    assert doc["verifier_version"].startswith("dstack-verifier ")
    assert doc["evaluated_at"] == "2026-03-05T10:50:03Z"
    assert doc["verdict"] == "passed"


def test_signature_verifies_offline_and_detects_tampering(
    engine: VerificationEngine, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    signed = sign_report(engine.verify(quote_report_request()), key)
    assert json.loads(signed.body)["verdict"] == "passed"
    assert verify_report_signature(signed.body, signed.signature, signed.public_key)
    assert verify_report_signature(signed.body, signed.signature, public_key_pem(key))
    forged = signed.body.replace(b'"verdict":"passed"', b'"verdict":"failed"')
    assert not verify_report_signature(forged, signed.signature, signed.public_key)
    # The signed document names its key: sha256 of the raw public key.
    named = json.loads(signed.body)["signing_key_id"]
    assert named == hashlib.sha256(signed.public_key).hexdigest() == key_id(key)


def test_signing_key_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    first = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_or_create_signing_key(path)) == public_key_bytes(first)


def test_the_attempt_is_signed_with_the_report(engine: VerificationEngine, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    signed = sign_report(engine.verify(quote_report_request()), key, attempt=3)
    assert json.loads(signed.body)["attempt"] == 3 == signed.document["attempt"]
    replayed = signed.body.replace(b'"attempt":3', b'"attempt":4')
    assert not verify_report_signature(replayed, signed.signature, signed.public_key)
