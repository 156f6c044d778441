"""Certificates as dstack makes them (ra-tls), and keys bound by quotes.

- An RA-TLS certificate carries its own TDX quote and event log in the
  extensions 1.3.6.1.4.1.62397.1.1 and .1.2 (each a DER OCTET STRING); its key
  is bound when the quote's report_data = sha512("ratls-cert:" || SPKI DER).
- The gateway's certificate keys are bound by "zt-cert" quotes
  (sha512("zt-cert:" || SPKI DER)), its ACME account by "acme-account" ones.
- Chains are checked as dstack's RA-TLS verifier checks them: each signature
  by the next certificate's key, each certificate valid at the evaluation
  time, issuers marked CA by basicConstraints. Trust comes from the attested
  binding, not from a web PKI root; a CA without keyCertSign is accepted,
  because dstack's KMS and app CAs are issued without it.
- A key counts for a task only when the binding quote is of the task's app:
  same attested app-id and compose-hash, same MRTD and RTMR0-2.

Pure: quote verification is injected (a QuoteVerifier).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .checks.context import AttestedQuote
from .errors import EvidenceMalformed
from .eventlog import Event, parse_event_log
from .identity import AttestedIdentity, IdentityProblem, attested_identity

RATLS_QUOTE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.1")
RATLS_EVENT_LOG_OID = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.2")
RATLS_APP_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.3")
# dstack's newer, SCALE-encoded attestation extension (not read here).
RATLS_ATTESTATION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.8")

# (attested quote or None, why not) for quote bytes: verified with dcap-qvl,
# TCB status allowed by policy, not a debug TD.
QuoteVerifier = Callable[[bytes], tuple[AttestedQuote | None, str]]

SAME_APP_REGISTERS = ("mr_td", "rt_mr0", "rt_mr1", "rt_mr2")


def bound_report_data(tag: str, content: bytes) -> bytes:
    """dstack's QuoteContentType::Custom(tag).to_report_data: sha512(tag:content)."""
    return hashlib.sha512(tag.encode("ascii") + b":" + content).digest()


def spki_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def describe(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string() or '(no subject)'}' (serial {cert.serial_number:x})"


def load_chain(pem: str, field: str = "certificate_chain") -> list[x509.Certificate]:
    """Leaf first, as TLS presents it; raises EvidenceMalformed naming the field."""
    return list(_load_chain(pem, field))


@lru_cache(maxsize=64)
def _load_chain(pem: str, field: str) -> tuple[x509.Certificate, ...]:
    # An app presents the same chain for months: parse it once per process.
    try:
        chain = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except ValueError as exc:
        raise EvidenceMalformed(field, f"not a PEM certificate chain ({exc})") from None
    return tuple(chain)


def _octets(raw: bytes) -> bytes:
    """The content of a DER OCTET STRING (how ra-tls wraps extension values)."""
    if len(raw) < 2 or raw[0] != 0x04:
        return raw
    length, offset = raw[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, offset = int.from_bytes(raw[2 : 2 + n], "big"), 2 + n
    return raw[offset : offset + length]


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return _octets(value.value) if isinstance(value, x509.UnrecognizedExtension) else None


@dataclass(frozen=True)
class EmbeddedAttestation:
    """The quote and event log an RA-TLS certificate carries."""

    quote: bytes
    events: list[Event] | None
    app_id: str  # hex, from the app-id extension (informational)
    # The log's text as carried, to pass on as a task's event_log (None when
    # absent or not UTF-8); `events` is None too when it does not parse.
    event_log: str | None = None


@lru_cache(maxsize=64)
def embedded_attestation(cert: x509.Certificate) -> EmbeddedAttestation | None:
    quote = _extension(cert, RATLS_QUOTE_OID)
    if quote is None:
        return None
    log = _extension(cert, RATLS_EVENT_LOG_OID)
    text: str | None = None
    events: list[Event] | None = None
    if log is not None:
        try:
            text = log.decode("utf-8")
            events = parse_event_log(text)
        except (UnicodeDecodeError, EvidenceMalformed):
            events = None
    app_id = _extension(cert, RATLS_APP_ID_OID)
    return EmbeddedAttestation(quote, events, app_id.hex() if app_id else "", text)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]


def names_domain(cert: x509.Certificate, domain: str) -> bool:
    """RFC 6125: an exact SAN, or a wildcard covering exactly one left label."""
    domain = domain.lower().rstrip(".")
    for name in _dns_names(cert):
        if name == domain:
            return True
        wildcard = name.startswith("*.") and domain.count(".") >= 2
        if wildcard and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


class ChainProblem(ValueError):
    """Why a chain does not hold together (names the certificate)."""


def verify_chain(chain: list[x509.Certificate], at: datetime) -> None:
    """Signatures and validity, dstack RA-TLS style; raises ChainProblem."""
    if not chain:
        raise ChainProblem("the chain is empty")
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainProblem(
                f"certificate {describe(cert)} is not valid at {at.isoformat()} "
                f"(valid {cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()})"
            )
    problem = _signature_problem(tuple(chain))
    if problem:
        raise ChainProblem(problem)


@lru_cache(maxsize=64)
def _signature_problem(chain: tuple[x509.Certificate, ...]) -> str:
    """Why the chain's signatures or CA marks do not hold, or "" (time-free:
    worked out once per chain and process, it is ECDSA's cost)."""
    try:
        _check_signatures(chain)
    except ChainProblem as exc:
        return str(exc)
    return ""


def _check_signatures(chain: tuple[x509.Certificate, ...]) -> None:
    for cert, issuer in itertools.pairwise(chain):
        try:
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ChainProblem(f"issuer {describe(issuer)} is not a CA (basicConstraints)")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ChainProblem(
                f"certificate {describe(cert)} is not signed by {describe(issuer)}: "
                f"{exc or type(exc).__name__}"
            ) from None
    top = chain[-1]
    if top.issuer == top.subject:
        try:
            top.verify_directly_issued_by(top)
        except (ValueError, TypeError, InvalidSignature):
            raise ChainProblem(f"self-signed {describe(top)} has a bad signature") from None


@dataclass(frozen=True)
class AppIdentity:
    """What makes a quote 'of the task's app'."""

    app_id: str
    compose_hash: str
    registers: tuple[str, ...]


def app_identity(attested: AttestedQuote, events: list[Event] | None) -> AppIdentity:
    """The identity a verified quote and its event log attest; raises IdentityProblem."""
    if events is None:
        raise IdentityProblem("no event log to read the app-id and compose-hash from")
    identity: AttestedIdentity = attested_identity(events, attested.register("rt_mr3"))
    if not identity.get("app-id") or not identity.get("compose-hash"):
        raise IdentityProblem("the event log has no app-id or compose-hash event")
    return AppIdentity(
        identity.get("app-id"),
        identity.get("compose-hash"),
        tuple(str(attested.fields.get(r, "")) for r in SAME_APP_REGISTERS),
    )


def same_app(task: AppIdentity, other: AppIdentity) -> str:
    """ "" when `other` is the task's app, else what differs."""
    differ = []
    if other.app_id != task.app_id:
        differ.append(f"app-id {other.app_id} (task: {task.app_id})")
    if other.compose_hash != task.compose_hash:
        differ.append(f"compose-hash {other.compose_hash} (task: {task.compose_hash})")
    for name, mine, theirs in zip(SAME_APP_REGISTERS, task.registers, other.registers, strict=True):
        if mine != theirs:
            differ.append(f"{name} differs")
    return "; ".join(differ)
