"""Every reference vector gives its documented outcome (vectors/README.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from services.verification.engine import VerificationEngine
from services.verification.model import (
    CheckStatus,
    Evidence,
    Report,
    VerificationFlags,
    VerificationRequest,
)
from services.verification.settings import VerificationSettings

from .support import (
    APP_ID,
    AT_90C06F,
    AT_SGX,
    AT_TDX,
    DCAP,
    DSTACK,
    collateral_90c06f,
    quote_report_request,
)

HARDWARE = VerificationFlags.only(["hardware"])


def _hardware(engine: VerificationEngine, quote: bytes, collateral: str, at: datetime) -> Report:
    request = VerificationRequest(
        evidence=Evidence(quote=quote, collateral=collateral),
        evaluated_at=at,
        flags=HARDWARE,
    )
    return engine.verify(request)


def test_tdx_quote_v4_is_up_to_date(engine: VerificationEngine) -> None:
    report = _hardware(
        engine,
        (DCAP / "tdx_quote.bin").read_bytes(),
        (DCAP / "tdx_quote.collateral.json").read_text(),
        AT_TDX,
    )
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.PASSED
    assert report.tcb_status == "UpToDate"
    assert report.advisory_ids == ()
    assert report.passed


def test_tdx_quote_digest_ignores_unsigned_padding(engine: VerificationEngine) -> None:
    raw = (DCAP / "tdx_quote.bin").read_bytes()
    collateral = (DCAP / "tdx_quote.collateral.json").read_text()
    plain = _hardware(engine, raw, collateral, AT_TDX)
    padded = _hardware(engine, raw[:-70] + b"\xff" * 70, collateral, AT_TDX)
    assert plain.evidence_digests["quote_sha256"] == padded.evidence_digests["quote_sha256"]
    assert plain.quote["signed_length"] == 5006 - 70


@pytest.mark.parametrize(
    ("quote", "collateral", "at"),
    [
        ((DCAP / "tdx_quote_v5.bin").read_bytes(), "collateral_fmspc_90C06F.json", AT_90C06F),
        (
            bytes.fromhex((DCAP / "tdx_quote_no_tcb_match.hex").read_text().strip()[2:]),
            "tdx_quote.collateral.json",
            AT_TDX,
        ),
    ],
    ids=["v5", "no_tcb_match"],
)
def test_quotes_without_matching_tcb_level_fail_hardware(
    engine: VerificationEngine, quote: bytes, collateral: str, at: datetime
) -> None:
    report = _hardware(engine, quote, (DCAP / collateral).read_text(), at)
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "No matching TCB level found" in hardware.reason
    assert not report.passed


def test_sgx_quote_status_and_advisories_fail_default_policy(engine: VerificationEngine) -> None:
    report = _hardware(
        engine,
        (DCAP / "sgx_quote.bin").read_bytes(),
        (DCAP / "sgx_quote.collateral.json").read_text(),
        AT_SGX,
    )
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "ConfigurationAndSWHardeningNeeded is not allowed" in hardware.reason
    assert report.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert report.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert hardware.details["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]


def test_sgx_quote_passes_when_policy_allows_its_status() -> None:
    settings = VerificationSettings(
        allowed_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded")
    )
    report = _hardware(
        VerificationEngine(settings),
        (DCAP / "sgx_quote.bin").read_bytes(),
        (DCAP / "sgx_quote.collateral.json").read_text(),
        AT_SGX,
    )
    assert report.check("hardware").status is CheckStatus.PASSED
    assert report.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")


def test_dstack_quote_report_passes_hardware_os_and_source_code(
    engine: VerificationEngine,
) -> None:
    report = engine.verify(quote_report_request(app_id=APP_ID))
    for name in ("hardware", "os", "source_code"):
        assert report.check(name).status is CheckStatus.PASSED, report.check(name).reason
    assert report.passed
    assert report.check("os").details["os_image_hash"].startswith("14ad42d0")
    assert report.check("source_code").details["app_id"] == APP_ID
    assert report.quote["verified"] is True
    assert {c.name for c in report.checks if c.status is CheckStatus.SKIPPED} == {
        "tee_controlled_key",
        "certificate_key",
        "dns_caa",
        "ct_log",
    }


def test_dstack_quote_report_with_default_flags_fails_for_missing_keys(
    engine: VerificationEngine,
) -> None:
    report = engine.verify(quote_report_request(flags=VerificationFlags()))
    assert not report.passed
    assert report.check("tee_controlled_key").status is CheckStatus.FAILED
    assert "neither a certificate chain" in report.check("tee_controlled_key").reason
    assert report.check("certificate_key").reason == "no certificate chain in the evidence"


def test_tdx_lite_capture_fails_with_cert_not_valid_yet(engine: VerificationEngine) -> None:
    doc = json.loads((DSTACK / "tdx-lite-getquote.json").read_text())
    report = _hardware(engine, bytes.fromhex(doc["quote"]), collateral_90c06f(), AT_90C06F)
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "CertNotValidYet" in hardware.reason


def test_dependent_checks_fail_when_the_quote_is_not_verified(engine: VerificationEngine) -> None:
    doc = json.loads((DSTACK / "tdx-lite-getquote.json").read_text())
    request = quote_report_request()
    evidence = replace(request.evidence, quote=bytes.fromhex(doc["quote"]))
    report = engine.verify(replace(request, evidence=evidence))
    for name in ("os", "source_code"):
        result = report.check(name)
        assert result.status is CheckStatus.FAILED
        assert "quote fields are not verified" in result.reason
    assert report.quote["verified"] is False
