"""dns_caa and ct_log through a fake fetcher serving recorded answers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.verification.checks.domain import check_ct_log, check_dns_caa, parse_caa
from services.verification.checks.keys import acme_binding, load_chain, ratls_binding, spki_of
from services.verification.model import CheckStatus

from .support import AT_90C06F, fake_context, make_chain, quote_report_evidence

ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/42"
DOH = "https://dns.example/dns-query"
CT = "https://ct.example/"


class FakeWeb:
    def __init__(self, json_answers: dict[str, Any], blobs: dict[str, bytes] | None = None) -> None:
        self.json_answers = json_answers
        self.blobs = blobs or {}
        self.requests: list[dict[str, str]] = []

    def get_json(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Any:
        self.requests.append(params)
        return self.json_answers.get(params.get("name") or params.get("q", ""), {})

    def get_bytes(self, url: str, params: dict[str, str]) -> bytes:
        return self.blobs[params["d"]]


def _caa(*values: str) -> dict[str, Any]:
    return {"Status": 0, "Answer": [{"type": 257, "data": v} for v in values]}


def _acme_ctx(**request: Any) -> Any:
    evidence = replace(quote_report_evidence(), acme_account_uri=ACCOUNT)
    return fake_context(acme_binding(ACCOUNT), evidence=evidence, **request)


def test_parse_caa_text_and_rfc3597_forms() -> None:
    assert parse_caa('0 issue "letsencrypt.org"') == ("issue", "letsencrypt.org")
    raw = b"\x00\x05issueletsencrypt.org"
    assert parse_caa(f"\\# {len(raw)} {raw.hex()}") == ("issue", "letsencrypt.org")


def test_dns_caa_passes_when_every_issue_record_names_the_attested_account() -> None:
    web = FakeWeb(
        {"example.com": _caa(f'0 issue "letsencrypt.org; accounturi={ACCOUNT}"', '0 iodef "x"')}
    )
    outcome = check_dns_caa(_acme_ctx(model_or_domain="app.example.com"), web, DOH)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    # RFC 8659 tree climbing: app.example.com had none, example.com had them.
    assert [r["name"] for r in web.requests] == ["app.example.com", "example.com"]


def test_dns_caa_fails_for_unrestricted_issuer() -> None:
    web = FakeWeb({"app.example.com": _caa('0 issue "letsencrypt.org"')})
    outcome = check_dns_caa(_acme_ctx(model_or_domain="app.example.com"), web, DOH)
    assert outcome.status is CheckStatus.FAILED
    assert "outside the attested ACME account" in outcome.reason


def test_dns_caa_fails_without_records() -> None:
    outcome = check_dns_caa(_acme_ctx(model_or_domain="app.example.com"), FakeWeb({}), DOH)
    assert outcome.status is CheckStatus.FAILED
    assert "no CAA issue records" in outcome.reason


def test_dns_caa_fails_without_attested_account() -> None:
    ctx = fake_context(bytes(64), model_or_domain="app.example.com")
    outcome = check_dns_caa(ctx, FakeWeb({}), DOH)
    assert outcome.status is CheckStatus.FAILED
    assert "no attested ACME account" in outcome.reason


def test_dns_caa_without_endpoint_is_an_error() -> None:
    outcome = check_dns_caa(_acme_ctx(model_or_domain="app.example.com"), None, "")
    assert outcome.status is CheckStatus.ERROR


def _ct_entry(cert_id: int) -> dict[str, Any]:
    return {
        "id": cert_id,
        "not_before": (AT_90C06F - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        "not_after": (AT_90C06F + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _leaf_pem(chain: str) -> bytes:
    return load_chain(chain)[0].public_bytes(Encoding.PEM)


def test_ct_log_passes_when_logged_certificates_carry_the_attested_key() -> None:
    pem, _ = make_chain()
    spki = spki_of(x509.load_pem_x509_certificate(_leaf_pem(pem)))
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    ctx = fake_context(ratls_binding(spki), evidence=evidence, model_or_domain="app.example.com")
    expired = _ct_entry(2) | {"not_after": "2020-01-01T00:00:00"}
    web = FakeWeb({"app.example.com": [_ct_entry(1), expired]}, {"1": _leaf_pem(pem)})
    outcome = check_ct_log(ctx, web, CT)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["current_entries"] == 1


def test_ct_log_fails_for_logged_certificate_with_unattested_key() -> None:
    pem, _ = make_chain()
    rogue, _ = make_chain()
    spki = spki_of(load_chain(pem)[0])
    evidence = replace(quote_report_evidence(), certificate_chain=pem)
    ctx = fake_context(ratls_binding(spki), evidence=evidence, model_or_domain="app.example.com")
    web = FakeWeb(
        {"app.example.com": [_ct_entry(1), _ct_entry(9)]},
        {"1": _leaf_pem(pem), "9": _leaf_pem(rogue)},
    )
    outcome = check_ct_log(ctx, web, CT)
    assert outcome.status is CheckStatus.FAILED
    assert "9 carry a key that is not attested" in outcome.reason
