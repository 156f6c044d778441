"""Synthetic stand-ins for what no public vector covers: dstack-shaped RA-TLS
chains (a leaf carrying a quote and event log in 1.3.6.1.4.1.62397.1.1/.1.2,
an app CA and a KMS CA issued without keyCertSign, validity from 1975, as
dstack's ra-tls makes them), and a quote verifier that accepts chosen quote
bytes, since a real quote cannot be made to bind a test key."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.verification.checks.context import AttestedQuote, CheckContext, QuoteUnverifiable
from services.verification.eventlog import parse_event_log, replay, runtime_event_digest
from services.verification.ratls import spki_of

from .support import quote_report_evidence

DSTACK_NOT_BEFORE = datetime(1975, 1, 1, tzinfo=UTC)
_KU_SIGN_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _octets(content: bytes) -> bytes:
    """DER OCTET STRING, as ra-tls wraps its extension values."""
    n = len(content)
    if n < 0x80:
        return bytes([0x04, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(size)]) + size + content


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dstack"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def dstack_chain(
    quote: bytes | None,
    event_log: str | None,
    *,
    not_after: datetime = datetime(2035, 9, 1, tzinfo=UTC),
    app_ca_is_ca: bool = True,
) -> tuple[str, bytes]:
    """(PEM chain leaf first, leaf SPKI DER): demo-cert <- Dstack App CA <- Dstack KMS CA."""
    kms_key = ec.generate_private_key(ec.SECP256R1())
    app_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())

    def base(subject: str, issuer: str, key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(DSTACK_NOT_BEFORE)
            .not_valid_after(not_after)
            .add_extension(_KU_SIGN_ONLY, critical=True)
        )

    kms = (
        base("Dstack KMS CA", "Dstack KMS CA", kms_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(kms_key, hashes.SHA256())
    )
    app = (
        base("Dstack App CA", "Dstack KMS CA", app_key)
        .add_extension(x509.BasicConstraints(ca=app_ca_is_ca, path_length=None), critical=True)
        .sign(kms_key, hashes.SHA256())
    )
    leaf_builder = base("demo-cert", "Dstack App CA", leaf_key)
    if quote is not None:
        leaf_builder = leaf_builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.1"), _octets(quote)
            ),
            critical=False,
        )
    if event_log is not None:
        leaf_builder = leaf_builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.2"), _octets(event_log.encode())
            ),
            critical=False,
        )
    leaf = leaf_builder.sign(app_key, hashes.SHA256())
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, app, kms)).decode()
    return pem, spki_of(leaf)


def event_log_of_app(app_id: str | None = None) -> str:
    """The quote-report.json event log, its app-id changed (digest recomputed) if asked."""
    events = json.loads(quote_report_evidence().event_log or "[]")
    if app_id is not None:
        for event in events:
            if event["event"] == "app-id":
                event["event_payload"] = app_id
                event["digest"] = runtime_event_digest("app-id", bytes.fromhex(app_id)).hex()
    return json.dumps(events)


def attested_like(ctx: CheckContext, report_data: bytes, event_log: str) -> AttestedQuote:
    """The task's verified quote, with another report_data and the RTMR3 of `event_log`."""
    assert ctx.attested is not None
    rtmr3 = replay(parse_event_log(event_log))[3]
    fields = dict(ctx.attested.fields) | {"report_data": report_data.hex(), "rt_mr3": rtmr3.hex()}
    return replace(ctx.attested, fields=fields)


class ChosenQuotes:
    """A QuoteVerifier that knows the quotes a test made up: quote bytes ->
    attested quote, or a rejection, or 'cannot be checked here'."""

    def __init__(self) -> None:
        self.accepted: dict[bytes, AttestedQuote] = {}
        self.rejected: dict[bytes, str] = {}
        self.unverifiable: set[bytes] = set()

    def __call__(self, quote: bytes) -> tuple[AttestedQuote | None, str]:
        if quote in self.unverifiable:
            raise QuoteUnverifiable("no collateral for FMSPC 00000000 at hand")
        if quote in self.accepted:
            return self.accepted[quote], ""
        return None, self.rejected.get(quote, "Verification failed: bad signature")


def with_chosen_quotes(ctx: CheckContext) -> tuple[CheckContext, ChosenQuotes]:
    quotes = ChosenQuotes()
    return replace(ctx, verify_quote=quotes), quotes


NOW_PLUS = timedelta(days=1)
