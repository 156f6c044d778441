"""A pool process signs and stores each report once (report_writer.py), and
hands back only what the summary names."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.verification.engine import VerificationEngine
from services.verification.errors import ReportStoreUnavailable
from services.verification.pool import VerificationPool
from services.verification.report import key_id, verify_report_signature
from services.verification.report_store import LocalReportStore, report_key
from services.verification.report_writer import SUMMARY_FIELDS, ReportWriter, WriteTarget
from services.verification.service import VerificationService
from services.verification.settings import ReportStoreSettings, VerificationSettings

from .support import quote_report_request

TASK = "task-7"


def _writer(root: Path, key: Ed25519PrivateKey, encryption_key: bytes = b"") -> ReportWriter:
    return ReportWriter(
        ReportStoreSettings(local_dir=root, local_encryption_key=encryption_key), key
    )


def test_a_report_is_signed_stored_and_answered_by_its_summary_only(
    engine: VerificationEngine, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    report = engine.verify(quote_report_request())
    result = _writer(tmp_path, key).write(report, WriteTarget(report_key(TASK, 2), 2))
    stored = LocalReportStore(tmp_path).get(report_key(TASK, 2))
    assert verify_report_signature(stored.body, stored.signature, key.public_key())
    document = json.loads(stored.body)
    assert document["attempt"] == 2 and document["signing_key_id"] == key_id(key)
    assert result.summary == {k: document[k] for k in SUMMARY_FIELDS if k in document}
    assert "quote" not in result.summary and "request" not in result.summary
    assert (result.key, result.attempt, result.already_stored) == (report_key(TASK, 2), 2, False)
    assert result.seconds == report.timings_ms["total"] / 1000
    # What crosses back to the service is less than the report (the checks'
    # details, which the summary carries, are most of both).
    assert len(pickle.dumps(result)) < len(pickle.dumps(report)) * 2 / 3


def test_a_second_write_of_the_attempt_answers_the_first_report(
    engine: VerificationEngine, tmp_path: Path
) -> None:
    writer = _writer(tmp_path, Ed25519PrivateKey.generate(), encryption_key=bytes(32))
    target = WriteTarget(report_key(TASK, 1), 1)
    first = writer.write(engine.verify(quote_report_request()), target)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}
    again = writer.write(engine.verify(quote_report_request()), target)
    assert again.already_stored and again.seconds == 0
    assert (again.report_sha256, again.summary) == (first.report_sha256, first.summary)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json")} == files


def test_a_store_fault_is_report_store_unavailable(
    engine: VerificationEngine, tmp_path: Path
) -> None:
    (tmp_path / "reports").write_bytes(b"")  # a file where the reports' folder goes
    writer = _writer(tmp_path, Ed25519PrivateKey.generate())
    with pytest.raises(ReportStoreUnavailable) as caught:
        writer.write(engine.verify(quote_report_request()), WriteTarget(report_key(TASK, 1), 1))
    assert "storing the report failed" in str(caught.value)
    # It crosses the process boundary as itself.
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)


def test_the_service_refuses_a_pool_that_signs_with_another_key(tmp_path: Path) -> None:
    settings = VerificationSettings()
    pool = VerificationPool(settings, max_workers=1, signing_key=Ed25519PrivateKey.generate())
    try:
        with pytest.raises(ValueError, match="another key"):
            VerificationService(
                pool, LocalReportStore(tmp_path), Ed25519PrivateKey.generate(), fetcher=None
            )
    finally:
        pool.shutdown()
