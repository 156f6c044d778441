"""RA-TLS certificates as dstack makes them, and the key checks on them.

The task's quote is the real quote-report.json vector (its fields as dcap-qvl
verifies them, report_data chosen: support.fake_context). The certificates
are synthetic dstack-shaped chains (dstack_certs.py) standing in for real
RA-TLS certificates, whose embedded quotes are accepted by a chosen-quote
verifier because no real quote can be made to bind a test key. One test runs
on a real dstack RA-TLS certificate when REAL_RATLS_CHAIN names one: the only
public one found is not vendored (no licence), see real_ratls.py.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from services.verification.checks.keys import (
    check_certificate_key,
    check_tee_controlled_key,
    ratls_binding,
)
from services.verification.engine import VerificationEngine
from services.verification.model import (
    CheckStatus,
    Evidence,
    VerificationFlags,
    VerificationRequest,
)
from services.verification.ratls import (
    ChainProblem,
    embedded_attestation,
    load_chain,
    verify_chain,
)
from services.verification.settings import VerificationSettings

from .dstack_certs import attested_like, dstack_chain, event_log_of_app, with_chosen_quotes
from .support import AT_90C06F, collateral_90c06f, fake_context, quote_report_evidence

EMBEDDED = b"embedded-ratls-quote"
OTHER_APP = "11" * 20


def _ctx(pem: str):  # type: ignore[no-untyped-def]
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    # The task's own quote binds nothing of the certificate: only the embedded one can.
    return with_chosen_quotes(fake_context(bytes(64), evidence=evidence))


def test_dstack_chain_without_keycertsign_holds() -> None:
    # Real dstack CAs (KMS CA, App CA) are issued without keyCertSign.
    pem, _ = dstack_chain(EMBEDDED, event_log_of_app())
    chain = load_chain(pem)
    assert not chain[1].extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    verify_chain(chain, AT_90C06F)
    embedded = embedded_attestation(chain[0])
    assert embedded is not None and embedded.quote == EMBEDDED
    assert embedded.events is not None and len(embedded.events) > 20
    # The log's text, as a task would pass it on.
    assert embedded.event_log == event_log_of_app()


def test_chain_problems_name_the_certificate() -> None:
    pem, _ = dstack_chain(EMBEDDED, None)
    chain = load_chain(pem)
    with pytest.raises(ChainProblem, match=r"'CN=demo-cert,O=Dstack'.*is not valid at"):
        verify_chain(chain, datetime(2036, 1, 1, tzinfo=UTC))
    other, _ = dstack_chain(EMBEDDED, None)
    mixed = [chain[0], *load_chain(other)[1:]]
    with pytest.raises(ChainProblem, match=r"'CN=demo-cert,O=Dstack'.*is not signed by"):
        verify_chain(mixed, AT_90C06F)
    not_ca, _ = dstack_chain(EMBEDDED, None, app_ca_is_ca=False)
    with pytest.raises(ChainProblem, match=r"Dstack App CA.*is not a CA"):
        verify_chain(load_chain(not_ca), AT_90C06F)


def test_embedded_quote_of_the_tasks_app_binds_the_key() -> None:
    pem, spki = dstack_chain(EMBEDDED, event_log_of_app())
    ctx, quotes = _ctx(pem)
    quotes.accepted[EMBEDDED] = attested_like(ctx, ratls_binding(spki), event_log_of_app())
    for check in (check_certificate_key, check_tee_controlled_key):
        outcome = check(ctx)
        assert outcome.status is CheckStatus.PASSED, outcome.reason
        assert "its own RA-TLS quote, of the task's app, binds its key" in outcome.reason


def test_genuine_certificate_of_another_app_fails_naming_it() -> None:
    # Its embedded quote verifies and binds its key, but attests another app-id.
    log = event_log_of_app(OTHER_APP)
    pem, spki = dstack_chain(EMBEDDED, log)
    ctx, quotes = _ctx(pem)
    quotes.accepted[EMBEDDED] = attested_like(ctx, ratls_binding(spki), log)
    for check in (check_certificate_key, check_tee_controlled_key):
        outcome = check(ctx)
        assert outcome.status is CheckStatus.FAILED
        assert "certificate 'CN=demo-cert,O=Dstack'" in outcome.reason
        assert f"is of another app (app-id {OTHER_APP}" in outcome.reason


def test_embedded_quote_binding_another_key_fails() -> None:
    pem, _ = dstack_chain(EMBEDDED, event_log_of_app())
    ctx, quotes = _ctx(pem)
    quotes.accepted[EMBEDDED] = attested_like(ctx, ratls_binding(b"other key"), event_log_of_app())
    outcome = check_certificate_key(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert "does not bind its key" in outcome.reason


def test_embedded_quote_that_does_not_verify_fails() -> None:
    pem, _ = dstack_chain(EMBEDDED, event_log_of_app())
    ctx, quotes = _ctx(pem)
    quotes.rejected[EMBEDDED] = "TCB status Revoked is not allowed"
    outcome = check_tee_controlled_key(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert "its RA-TLS quote does not verify (TCB status Revoked is not allowed)" in outcome.reason


def test_embedded_quote_that_cannot_be_checked_is_an_error_not_a_pass() -> None:
    pem, _ = dstack_chain(EMBEDDED, event_log_of_app())
    ctx, quotes = _ctx(pem)
    quotes.unverifiable.add(EMBEDDED)
    for check in (check_certificate_key, check_tee_controlled_key):
        outcome = check(ctx)
        assert outcome.status is CheckStatus.ERROR
        assert "cannot be verified here" in outcome.reason


def test_embedded_event_log_that_does_not_replay_fails() -> None:
    pem, spki = dstack_chain(EMBEDDED, event_log_of_app())
    ctx, quotes = _ctx(pem)
    # The quote's RTMR3 is that of another log: this one is not what it measured.
    quotes.accepted[EMBEDDED] = attested_like(ctx, ratls_binding(spki), event_log_of_app("22" * 20))
    outcome = check_certificate_key(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert "cannot tell whether its quote is of the task's app (RTMR3 replayed" in outcome.reason


def test_certificate_bound_by_the_tasks_own_quote_passes() -> None:
    # An RA-TLS leaf without an embedded quote, whose key the task's quote binds.
    pem, spki = dstack_chain(None, None)
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    ctx, _ = with_chosen_quotes(fake_context(ratls_binding(spki), evidence=evidence))
    outcome = check_certificate_key(ctx)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert "the task's own quote binds its key" in outcome.reason


def test_engine_verifies_embedded_quotes_with_dcap_qvl() -> None:
    # Through the engine: the embedded bytes go to dcap-qvl, which rejects
    # them (not a quote), so the real vector's task fails both key checks.
    pem, _ = dstack_chain(b"\x04\x00" + bytes(600), event_log_of_app())
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    report = VerificationEngine().verify(
        VerificationRequest(
            evidence=evidence,
            evaluated_at=AT_90C06F,
            flags=VerificationFlags.only(["hardware", "tee_controlled_key", "certificate_key"]),
        )
    )
    assert report.check("hardware").status is CheckStatus.PASSED
    for name in ("tee_controlled_key", "certificate_key"):
        result = report.check(name)
        assert result.status is CheckStatus.FAILED
        assert "its RA-TLS quote does not verify" in result.reason


# trust-center's chain, extracted as real_ratls.py says (it may not be vendored).
REAL_RATLS = os.environ.get("REAL_RATLS_CHAIN", "")


@pytest.mark.skipif(
    not REAL_RATLS,
    reason="REAL_RATLS_CHAIN unset: the real RA-TLS chain is not vendored, see real_ratls.py",
)
def test_real_dstack_ratls_certificate_binds_its_own_apps_key() -> None:
    """A real dstack app certificate (trust-center's debug data: demo-cert <-
    Dstack App CA <- Dstack KMS CA, quote with FMSPC 90C06F): its embedded quote
    verifies with the 90C06F collateral (OutOfDate at 2026-03-05) and binds its
    key; as its own app's task both key checks pass, as another app's they fail."""
    pem = Path(REAL_RATLS).read_text()
    embedded = embedded_attestation(load_chain(pem)[0])
    assert embedded is not None and embedded.events is not None
    engine = VerificationEngine(
        VerificationSettings(allowed_tcb_statuses=("UpToDate", "OutOfDate"))
    )
    flags = VerificationFlags.only(["hardware", "tee_controlled_key", "certificate_key"])
    own = Evidence(
        quote=embedded.quote,
        event_log=embedded.event_log,
        certificate_chain=pem,
        collateral=collateral_90c06f(),
    )
    report = engine.verify(VerificationRequest(evidence=own, evaluated_at=AT_90C06F, flags=flags))
    assert report.passed, [c.reason for c in report.checks]
    assert report.check("hardware").details["tcb_status"] == "OutOfDate"
    other = replace(quote_report_evidence(), certificate_chain=pem)
    report = engine.verify(VerificationRequest(evidence=other, evaluated_at=AT_90C06F, flags=flags))
    for name in ("tee_controlled_key", "certificate_key"):
        assert report.check(name).status is CheckStatus.FAILED
        assert "is of another app" in report.check(name).reason
