"""tee_controlled_key and certificate_key on the function level.

A real quote's report_data cannot be changed, so these tests choose the
verified report_data themselves (support.fake_context).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization

from services.verification.checks.keys import (
    acme_binding,
    check_certificate_key,
    check_tee_controlled_key,
    key_binding,
    load_chain,
    ratls_binding,
    spki_of,
)
from services.verification.engine import VerificationEngine
from services.verification.model import CheckStatus, VerificationFlags

from .support import (
    AT_90C06F,
    fake_context,
    make_chain,
    quote_report_evidence,
    quote_report_request,
)

ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/123456"


def _spki(pem: str) -> bytes:
    return spki_of(load_chain(pem)[0])


def _context(report_data: bytes, **evidence_fields: Any) -> Any:
    evidence = replace(quote_report_evidence(), **evidence_fields)
    return fake_context(report_data, evidence=evidence, model_or_domain="app.example.com")


def test_ratls_binding_is_sha512_of_prefixed_spki() -> None:
    pem, key = make_chain()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert _spki(pem) == spki
    assert key_binding(ratls_binding(spki), spki_der=spki) == "ratls-cert"
    assert key_binding(bytes(64), spki_der=spki) is None


def test_acme_binding_is_sha512_of_prefixed_uri() -> None:
    assert key_binding(acme_binding(ACCOUNT), account_uri=ACCOUNT) == "acme-account"
    assert key_binding(acme_binding(ACCOUNT), account_uri=ACCOUNT + "7") is None


def test_tee_controlled_key_passes_for_bound_certificate() -> None:
    pem, _ = make_chain()
    outcome = check_tee_controlled_key(_context(ratls_binding(_spki(pem)), certificate_chain=pem))
    assert outcome.status is CheckStatus.PASSED
    assert outcome.details["binding"] == "ratls-cert"


def test_tee_controlled_key_passes_for_bound_acme_account() -> None:
    outcome = check_tee_controlled_key(_context(acme_binding(ACCOUNT), acme_account_uri=ACCOUNT))
    assert outcome.status is CheckStatus.PASSED
    assert outcome.details["binding"] == "acme-account"


def test_tee_controlled_key_fails_for_unbound_certificate() -> None:
    pem, _ = make_chain()
    other, _ = make_chain()
    outcome = check_tee_controlled_key(_context(ratls_binding(_spki(other)), certificate_chain=pem))
    assert outcome.status is CheckStatus.FAILED
    assert "the task's quote does not bind its key" in outcome.reason


def test_certificate_key_passes_for_valid_chain_with_attested_leaf() -> None:
    pem, _ = make_chain()
    outcome = check_certificate_key(_context(ratls_binding(_spki(pem)), certificate_chain=pem))
    assert outcome.status is CheckStatus.PASSED, outcome.reason


def test_certificate_whose_key_is_not_attested_fails() -> None:
    pem, _ = make_chain()
    other, _ = make_chain()
    outcome = check_certificate_key(_context(ratls_binding(_spki(other)), certificate_chain=pem))
    assert outcome.status is CheckStatus.FAILED
    assert "no verified quote of the task's app binds the key of 'CN=app.example.com'" in (
        outcome.reason
    )


def test_certificate_expired_at_evaluation_time_fails() -> None:
    pem, _ = make_chain(
        not_before=AT_90C06F - timedelta(days=90), not_after=AT_90C06F - timedelta(days=1)
    )
    outcome = check_certificate_key(_context(ratls_binding(_spki(pem)), certificate_chain=pem))
    assert outcome.status is CheckStatus.FAILED
    assert "is not valid at 2026-03-05T10:50:03+00:00" in outcome.reason


def test_certificate_for_another_domain_fails() -> None:
    pem, _ = make_chain(domain="other.example.org")
    outcome = check_certificate_key(_context(ratls_binding(_spki(pem)), certificate_chain=pem))
    assert outcome.status is CheckStatus.FAILED
    assert "does not name the task's domain app.example.com" in outcome.reason


def test_chain_with_broken_signature_fails() -> None:
    pem, _ = make_chain()
    other, _ = make_chain()
    leaf = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    foreign_ca = "-----BEGIN CERTIFICATE-----" + other.split("-----BEGIN CERTIFICATE-----")[2]
    mixed = leaf + foreign_ca
    outcome = check_certificate_key(_context(ratls_binding(_spki(pem)), certificate_chain=mixed))
    assert outcome.status is CheckStatus.FAILED


def test_real_quote_with_unattested_certificate_fails_both_key_checks(
    engine: VerificationEngine,
) -> None:
    pem, _ = make_chain()
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    report = engine.verify(
        quote_report_request(
            evidence=evidence,
            model_or_domain="app.example.com",
            flags=VerificationFlags.only(["hardware", "tee_controlled_key", "certificate_key"]),
        )
    )
    assert report.check("hardware").status is CheckStatus.PASSED
    assert report.check("tee_controlled_key").status is CheckStatus.FAILED
    assert "no verified quote of the task's app binds" in report.check("certificate_key").reason
    assert not report.passed
