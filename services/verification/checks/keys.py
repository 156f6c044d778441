"""tee_controlled_key and certificate_key: binding keys to the quote's report_data."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..errors import EvidenceMalformed
from .context import CheckContext, Outcome, unverified

RATLS_PREFIX = b"ratls-cert:"
ACME_PREFIX = b"acme-account:"


def ratls_binding(spki_der: bytes) -> bytes:
    return hashlib.sha512(RATLS_PREFIX + spki_der).digest()


def acme_binding(account_uri: str) -> bytes:
    return hashlib.sha512(ACME_PREFIX + account_uri.encode("utf-8")).digest()


def key_binding(
    report_data: bytes, *, spki_der: bytes | None = None, account_uri: str | None = None
) -> str | None:
    """Which binding `report_data` carries: "ratls-cert", "acme-account" or None."""
    if spki_der is not None and report_data == ratls_binding(spki_der):
        return "ratls-cert"
    if account_uri and report_data == acme_binding(account_uri):
        return "acme-account"
    return None


def spki_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_chain(pem: str) -> list[x509.Certificate]:
    """Leaf first, as TLS presents it; raises EvidenceMalformed naming the field."""
    try:
        chain = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except ValueError as exc:
        raise EvidenceMalformed(
            "certificate_chain", f"not a PEM certificate chain ({exc})"
        ) from None
    return chain


def check_tee_controlled_key(ctx: CheckContext) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    evidence = ctx.request.evidence
    report_data = ctx.attested.register("report_data")
    details: dict[str, Any] = {"report_data": report_data.hex()}
    if not evidence.certificate_chain and not evidence.acme_account_uri:
        return Outcome.failed(
            "no key to check: the evidence has neither a certificate chain (RA-TLS) "
            "nor an ACME account URI",
            **details,
        )
    spki = (
        spki_of(load_chain(evidence.certificate_chain)[0]) if evidence.certificate_chain else None
    )
    binding = key_binding(report_data, spki_der=spki, account_uri=evidence.acme_account_uri)
    if binding == "ratls-cert" and spki is not None:
        return Outcome.passed(
            'report_data == sha512("ratls-cert:" || leaf SPKI): the TLS key is TEE-controlled',
            **details,
            binding=binding,
            spki_sha256=hashlib.sha256(spki).hexdigest(),
        )
    if binding == "acme-account":
        return Outcome.passed(
            'report_data == sha512("acme-account:" || account URI): the ACME account is '
            "TEE-controlled",
            **details,
            binding=binding,
            account_uri=evidence.acme_account_uri,
        )
    tried = [
        name
        for name, present in (
            ("the leaf certificate's key (ratls-cert)", spki is not None),
            ("the ACME account URI (acme-account)", bool(evidence.acme_account_uri)),
        )
        if present
    ]
    return Outcome.failed(f"report_data binds neither {' nor '.join(tried)}", **details)


def verify_chain(chain: list[x509.Certificate], at: datetime, domain: str) -> None:
    """Raise VerificationError unless the chain links up to its own top certificate
    and every certificate is valid at `at`.

    The anchor is the chain's top certificate: RA-TLS chains end in an app CA that
    no public root signs. What makes the leaf trustworthy is its attested key,
    checked separately; here we only require a well-formed chain valid at `at`.
    """
    anchor = chain[-1]
    leaf, intermediates = chain[0], chain[1:-1]
    if len(chain) == 1:
        # A lone self-signed certificate: only its validity period can be checked.
        if not anchor.not_valid_before_utc <= at <= anchor.not_valid_after_utc:
            raise VerificationError("certificate is not valid at the evaluation time")
        return
    # RA-TLS leaves carry dstack's own extensions (quote, event log) that the
    # web PKI end-entity profile would reject; only the SAN is required, and
    # only when a name is checked.
    ee_policy = ExtensionPolicy.permit_all()
    if domain:
        ee_policy = ee_policy.require_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        )
    builder = (
        PolicyBuilder()
        .store(Store([anchor]))
        .time(at)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
    )
    if domain:
        builder.build_server_verifier(x509.DNSName(domain)).verify(leaf, intermediates)
    else:
        builder.build_client_verifier().verify(leaf, intermediates)


def check_certificate_key(ctx: CheckContext) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    pem = ctx.request.evidence.certificate_chain
    if not pem:
        return Outcome.failed("no certificate chain in the evidence")
    chain = load_chain(pem)
    leaf = chain[0]
    spki = spki_of(leaf)
    details: dict[str, Any] = {
        "chain_length": len(chain),
        "leaf_subject": leaf.subject.rfc4514_string(),
        "leaf_not_after": leaf.not_valid_after_utc.isoformat(),
        "leaf_spki_sha256": hashlib.sha256(spki).hexdigest(),
    }
    domain = ctx.request.model_or_domain if "." in ctx.request.model_or_domain else ""
    try:
        verify_chain(chain, ctx.request.evaluated_at, domain)
    except VerificationError as exc:
        return Outcome.failed(
            f"certificate chain is not valid at the evaluation time: {exc}", **details
        )
    report_data = ctx.attested.register("report_data")
    if key_binding(report_data, spki_der=spki) == "ratls-cert":
        return Outcome.passed("chain valid; the leaf key is the attested key", **details)
    return Outcome.failed(
        "chain valid, but the leaf certificate's key is not attested: report_data does not "
        'equal sha512("ratls-cert:" || leaf SPKI)',
        **details,
    )


def attested_spki(ctx: CheckContext) -> bytes | None:
    """SPKI of the evidence's leaf certificate if report_data binds it (RA-TLS)."""
    pem = ctx.request.evidence.certificate_chain
    if ctx.attested is None or not pem:
        return None
    spki = spki_of(load_chain(pem)[0])
    return spki if key_binding(ctx.attested.register("report_data"), spki_der=spki) else None


def attested_account_uri(ctx: CheckContext) -> str | None:
    """The evidence's ACME account URI if report_data binds it."""
    uri = ctx.request.evidence.acme_account_uri
    if ctx.attested is None or not uri:
        return None
    return uri if key_binding(ctx.attested.register("report_data"), account_uri=uri) else None
