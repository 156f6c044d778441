"""One quote per key, as dstack's gateway publishes them in acme-info.

Synthetic throughout, standing in for a gateway's /.dstack/acme-info (no
public vector has one): an account_quote binding sha512("acme-account:" ||
account_uri) and quoted_hist_keys whose "zt-cert" quotes bind each
certificate key. The quotes are chosen bytes accepted by a chosen-quote
verifier; their fields are the real quote-report.json vector's (the task's
app) unless a test changes them. DNS and CT answers are recorded ones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from services.verification.acme import parse_acme_info
from services.verification.checks.domain import check_ct_log, check_dns_caa
from services.verification.checks.keys import (
    acme_binding,
    check_certificate_key,
    check_tee_controlled_key,
    zt_cert_binding,
)
from services.verification.errors import EvidenceMalformed
from services.verification.model import CheckStatus
from services.verification.ratls import load_chain, spki_of

from .dstack_certs import attested_like, event_log_of_app, with_chosen_quotes
from .support import fake_context, make_chain, quote_report_evidence
from .test_domain import CT, DOH, FakeWeb, _caa

ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/2229341"
DOMAIN = "app.example.com"
ACCOUNT_QUOTE = b"account-quote"


def _get_quote(quote: bytes, app_id: str | None = None) -> str:
    """A guest agent GetQuoteResponse as the gateway stores it (JSON text)."""
    return json.dumps({"quote": quote.hex(), "event_log": event_log_of_app(app_id)})


def _setup(keys: list[tuple[bytes, bytes]], *, chain: str | None = None, **info: Any):  # type: ignore[no-untyped-def]
    acme = {
        "account_uri": ACCOUNT,
        "account_quote": _get_quote(ACCOUNT_QUOTE),
        "quoted_hist_keys": [
            {"public_key": spki.hex(), "quote": _get_quote(quote)} for spki, quote in keys
        ],
    } | info
    evidence = replace(quote_report_evidence(), acme_info=json.dumps(acme), certificate_chain=chain)
    ctx, quotes = with_chosen_quotes(
        fake_context(bytes(64), evidence=evidence, model_or_domain=DOMAIN)
    )
    quotes.accepted[ACCOUNT_QUOTE] = attested_like(ctx, acme_binding(ACCOUNT), event_log_of_app())
    for spki, quote in keys:
        quotes.accepted[quote] = attested_like(ctx, zt_cert_binding(spki), event_log_of_app())
    return ctx, quotes


def _gateway_cert() -> tuple[str, bytes]:
    pem, _ = make_chain(domain=DOMAIN)
    return pem, spki_of(load_chain(pem)[0])


def _ct_web(*pems: str) -> FakeWeb:
    entries = [
        {"id": i, "not_before": "2026-01-01T00:00:00", "not_after": "2026-12-01T00:00:00"}
        for i in range(len(pems))
    ]
    blobs = {
        str(i): pem.split("-----END CERTIFICATE-----")[0].encode() + b"-----END CERTIFICATE-----\n"
        for i, pem in enumerate(pems)
    }
    caa = _caa(f'0 issue "letsencrypt.org; accounturi={ACCOUNT}"')
    return FakeWeb({DOMAIN: entries, "example.com": caa, DOMAIN + "_caa": {}}, blobs)


class _Web(FakeWeb):
    """CT answers for the domain query, CAA answers for the name lookups."""

    def __init__(self, ct: FakeWeb) -> None:
        super().__init__(ct.json_answers, ct.blobs)

    def get_json(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Any:
        if params.get("type") == "CAA":
            return self.json_answers.get("example.com") if params["name"] == "example.com" else {}
        return self.json_answers.get(params.get("q", ""), [])


def test_parse_acme_info_names_bad_fields() -> None:
    with pytest.raises(EvidenceMalformed, match=r"quoted_hist_keys\[0\]\.public_key"):
        parse_acme_info(json.dumps({"quoted_hist_keys": [{"public_key": "zz"}]}))
    info = parse_acme_info(json.dumps({"account_uri": ACCOUNT, "account_quote": "not json"}))
    assert info.account_quote is None
    assert "not GetQuoteResponse JSON" in info.account_problem


def test_account_quote_of_the_tasks_app_makes_the_account_tee_controlled() -> None:
    ctx, _ = _setup([])
    outcome = check_tee_controlled_key(ctx)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["account_uri"] == ACCOUNT


def test_account_quote_of_another_app_does_not_count() -> None:
    ctx, quotes = _setup([])
    other = event_log_of_app("33" * 20)
    evidence = replace(
        ctx.request.evidence,
        acme_info=json.dumps(
            {"account_uri": ACCOUNT, "account_quote": _get_quote(ACCOUNT_QUOTE, "33" * 20)}
        ),
    )
    ctx = replace(ctx, request=replace(ctx.request, evidence=evidence))
    quotes.accepted[ACCOUNT_QUOTE] = attested_like(ctx, acme_binding(ACCOUNT), other)
    outcome = check_tee_controlled_key(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert f"ACME account {ACCOUNT}: its quote is of another app" in outcome.reason


def test_zt_cert_quote_binds_the_gateway_certificate() -> None:
    pem, spki = _gateway_cert()
    ctx, _ = _setup([(spki, b"zt-1")], chain=pem)
    outcome = check_certificate_key(ctx)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["binding"] == "zt-cert"


def test_zt_cert_quote_binding_another_key_fails_naming_the_certificate() -> None:
    pem, spki = _gateway_cert()
    ctx, quotes = _setup([(spki, b"zt-1")], chain=pem)
    quotes.accepted[b"zt-1"] = attested_like(ctx, zt_cert_binding(b"other"), event_log_of_app())
    outcome = check_certificate_key(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert "certificate 'CN=app.example.com'" in outcome.reason
    assert 'report_data is not sha512("zt-cert:" || ...)' in outcome.reason


def test_dns_caa_ct_log_and_certificate_key_pass_together() -> None:
    """The point of one quote per key: account and certificate keys each have theirs."""
    pem, spki = _gateway_cert()
    older, older_spki = _gateway_cert()
    ctx, _ = _setup([(older_spki, b"zt-0"), (spki, b"zt-1")], chain=pem)
    web = _Web(_ct_web(pem, older))
    results = {
        "certificate_key": check_certificate_key(ctx),
        "tee_controlled_key": check_tee_controlled_key(ctx),
        "dns_caa": check_dns_caa(ctx, web, DOH),
        "ct_log": check_ct_log(ctx, web, CT),
    }
    for name, outcome in results.items():
        assert outcome.status is CheckStatus.PASSED, (name, outcome.reason)


def test_ct_log_fails_for_a_logged_key_no_quote_binds() -> None:
    pem, spki = _gateway_cert()
    rogue, _ = _gateway_cert()
    ctx, _ = _setup([(spki, b"zt-1")], chain=pem)
    outcome = check_ct_log(ctx, _Web(_ct_web(pem, rogue)), CT)
    assert outcome.status is CheckStatus.FAILED
    assert "logged certificate(s) 1 carry a key that is not attested" in outcome.reason


def test_ct_log_errors_when_a_key_quote_cannot_be_checked() -> None:
    pem, spki = _gateway_cert()
    ctx, quotes = _setup([(spki, b"zt-1")], chain=pem)
    quotes.unverifiable.add(b"zt-1")
    outcome = check_ct_log(ctx, _Web(_ct_web(pem)), CT)
    assert outcome.status is CheckStatus.ERROR


def test_dns_caa_fails_when_the_account_quote_does_not_verify() -> None:
    ctx, quotes = _setup([])
    del quotes.accepted[ACCOUNT_QUOTE]
    outcome = check_dns_caa(ctx, _Web(_ct_web()), DOH)
    assert outcome.status is CheckStatus.FAILED
    assert "the account quote does not verify" in outcome.reason


def _account_of_app(app_id: str, gateway_app_id: str = ""):  # type: ignore[no-untyped-def]
    ctx, quotes = _setup([])
    log = event_log_of_app(app_id)
    acme = {"account_uri": ACCOUNT, "account_quote": _get_quote(ACCOUNT_QUOTE, app_id)}
    evidence = replace(ctx.request.evidence, acme_info=json.dumps(acme))
    request = replace(ctx.request, evidence=evidence, gateway_app_id=gateway_app_id)
    ctx = replace(ctx, request=request)
    quotes.accepted[ACCOUNT_QUOTE] = attested_like(ctx, acme_binding(ACCOUNT), log)
    return ctx


def test_dns_caa_accepts_the_gateways_account_quote_and_no_other_apps() -> None:
    # The account quote comes from the gateway app (kms_info.gateway_app_id on a
    # Phala Cloud chain), not from the task's app.
    gateway = "44" * 20
    web = _Web(_ct_web())
    passed = check_dns_caa(_account_of_app(gateway, gateway_app_id=gateway), web, DOH)
    assert passed.status is CheckStatus.PASSED, passed.reason
    stranger = check_dns_caa(_account_of_app("55" * 20, gateway_app_id=gateway), web, DOH)
    assert stranger.status is CheckStatus.FAILED
    assert f"attests app-id {'55' * 20}, neither the task's app nor its gateway" in stranger.reason
