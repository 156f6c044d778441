"""Canonical, signed reports and where they are stored."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from services.verification.engine import VerificationEngine
from services.verification.errors import EvidenceMalformed, ReportNotFound
from services.verification.report import (
    canonical_json,
    key_id,
    load_or_create_signing_key,
    public_key_bytes,
    public_key_pem,
    sign_report,
    verify_report_signature,
)
from services.verification.report_store import (
    LocalReportStore,
    ReportStore,
    S3ReportStore,
    report_key,
)
from services.verification.settings import ReportStoreSettings

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


def test_report_key_layout() -> None:
    assert report_key("task-1") == "reports/task-1.json"
    with pytest.raises(EvidenceMalformed):
        report_key("../x")


def _round_trip(store: ReportStore) -> None:
    key = report_key("task-42")
    store.put(key, b'{"verdict":"passed"}', b"\x01" * 64)
    stored = store.get(key)
    assert (stored.body, stored.signature, stored.content_type) == (
        b'{"verdict":"passed"}',
        b"\x01" * 64,
        "application/json",
    )
    with pytest.raises(ReportNotFound):
        store.get(report_key("task-43"))
    with pytest.raises(ReportNotFound):
        store.get("reports/../../etc/passwd")


def test_local_store_round_trip_and_layout(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    _round_trip(store)
    assert (tmp_path / "reports/task-42.json").exists()
    assert (tmp_path / "reports/task-42.json.sig").read_bytes() == b"\x01" * 64


@pytest.mark.integration
def test_s3_store_round_trip_over_http(s3_settings: ReportStoreSettings) -> None:
    store = S3ReportStore(s3_settings)  # creates the bucket (s3_create_bucket=True)
    _round_trip(store)
    # Same layout as the folder store: the signature object sits beside the report.
    sig = store.client.get_object(Bucket=s3_settings.s3_bucket, Key="reports/task-42.json.sig")
    assert sig["Body"].read() == b"\x01" * 64


@pytest.mark.integration
def test_s3_store_with_signed_report(
    s3_settings: ReportStoreSettings, engine: VerificationEngine, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    report = engine.verify(quote_report_request())
    signed = sign_report(report, key)
    store = S3ReportStore(s3_settings)
    object_key = report_key(report.task_id)
    store.put(object_key, signed.body, signed.signature)
    again = S3ReportStore(s3_settings).get(object_key)
    assert verify_report_signature(again.body, again.signature, signed.public_key)
