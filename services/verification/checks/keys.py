"""tee_controlled_key and certificate_key: keys bound by a verified quote of the task's app.

dstack uses one quote per key: an RA-TLS certificate carries its own quote
(and event log); the gateway publishes an account quote for its ACME account
and a "zt-cert" quote per certificate key (acme-info). A key counts as
TEE-controlled for a task only when a verified quote *of the task's app*
binds it: the task's own quote, or another whose attested app-id,
compose-hash, MRTD and RTMR0-2 are the task's. A genuine certificate of
another app, with a valid quote of its own, does not count.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..acme import ACME_ACCOUNT_TAG, ZT_CERT_TAG, AcmeInfo, parse_acme_info
from ..eventlog import Event, parse_event_log
from ..identity import IdentityProblem
from ..model import CheckStatus, Evidence
from ..ratls import (
    AppIdentity,
    ChainProblem,
    EmbeddedAttestation,
    app_identity,
    bound_report_data,
    describe,
    embedded_attestation,
    load_chain,
    names_domain,
    same_app,
    spki_of,
    verify_chain,
)
from .context import AttestedQuote, CheckContext, Outcome, QuoteUnverifiable, unverified

RATLS_TAG = "ratls-cert"


def ratls_binding(spki_der: bytes) -> bytes:
    return bound_report_data(RATLS_TAG, spki_der)


def acme_binding(account_uri: str) -> bytes:
    return bound_report_data(ACME_ACCOUNT_TAG, account_uri.encode("utf-8"))


def zt_cert_binding(spki_der: bytes) -> bytes:
    return bound_report_data(ZT_CERT_TAG, spki_der)


def key_binding(
    report_data: bytes, *, spki_der: bytes | None = None, account_uri: str | None = None
) -> str | None:
    """Which binding `report_data` carries: "ratls-cert", "acme-account" or None."""
    if spki_der is not None and report_data == ratls_binding(spki_der):
        return RATLS_TAG
    if account_uri and report_data == acme_binding(account_uri):
        return ACME_ACCOUNT_TAG
    return None


@dataclass
class Binding:
    """Whether one key is bound for the task, and why (or why not)."""

    bound: bool
    reason: str
    could_not_run: bool = False  # a quote could not be checked here (error, not failure)
    details: dict[str, Any] = field(default_factory=dict)


def task_identity(ctx: CheckContext) -> AppIdentity:
    """The task's own app identity; raises IdentityProblem."""
    if ctx.attested is None:
        raise IdentityProblem("the task's quote is not verified")
    return app_identity(ctx.attested, ctx.events)


def _of_task_app(
    ctx: CheckContext,
    what: str,
    label: str,
    quote: bytes,
    report_data: bytes,
    unbound: str,
    events: Callable[[], list[Event] | None],
) -> AttestedQuote | Binding:
    """`quote` verified, binding `report_data` and of the task's app (its event
    log from `events`, read only then); otherwise the Binding saying why not.
    `label` names the quote in the reasons, `unbound` is the reason when it
    binds something else."""
    if ctx.verify_quote is None:
        return Binding(False, f"{what}: no quote verifier here", could_not_run=True)
    try:
        attested, problem = ctx.verify_quote(quote)
    except QuoteUnverifiable as exc:
        return Binding(False, f"{what}: {label} cannot be verified here ({exc})", True)
    if attested is None:
        return Binding(False, f"{what}: {label} does not verify ({problem})")
    if attested.register("report_data") != report_data:
        return Binding(False, f"{what}: {unbound}")
    try:
        theirs = app_identity(attested, events())
        mine = task_identity(ctx)
    except (IdentityProblem, ValueError) as exc:  # ValueError: the event log's parse
        return Binding(False, f"{what}: cannot tell whether its quote is of the task's app ({exc})")
    differ = same_app(mine, theirs)
    if differ:
        return Binding(False, f"{what}: {label} is of another app ({differ})")
    return attested


def _quote_of_task_app(
    ctx: CheckContext, quote: bytes, events_text: str | None, tag: str, content: bytes, what: str
) -> Binding:
    """Does `quote` (verified) bind sha512(tag:content) and belong to the task's app?"""
    found = _of_task_app(
        ctx,
        what,
        "its quote",
        quote,
        bound_report_data(tag, content),
        f'its quote\'s report_data is not sha512("{tag}:" || ...)',
        lambda: parse_event_log(events_text) if events_text is not None else None,
    )
    if isinstance(found, Binding):
        return found
    return Binding(
        True,
        f"{what}: bound by a verified quote of the task's app ({tag})",
        details={"binding": tag, "binding_tcb_status": found.tcb_status},
    )


def _acme_info(ctx: CheckContext) -> AcmeInfo | None:
    text = ctx.request.evidence.acme_info
    return parse_acme_info(text) if text else None


def certificate_binding(ctx: CheckContext, cert: x509.Certificate) -> Binding:
    """Is this certificate's key bound by a verified quote of the task's app?
    (Worked out once per verification: both key checks ask.)"""
    key = ("certificate_binding", cert.fingerprint(hashes.SHA256()))
    if key not in ctx.memo:
        ctx.memo[key] = _certificate_binding(ctx, cert)
    found: Binding = ctx.memo[key]
    return found


def _certificate_binding(ctx: CheckContext, cert: x509.Certificate) -> Binding:
    assert ctx.attested is not None
    spki = spki_of(cert)
    what = f"certificate {describe(cert)}"
    tried: list[Binding] = []
    embedded = embedded_attestation(cert)
    if embedded is not None:
        tried.append(_embedded(ctx, embedded, spki, what))
        if tried[-1].bound:
            return tried[-1]
    if ctx.attested.register("report_data") == ratls_binding(spki):
        return Binding(
            True,
            f"{what}: the task's own quote binds its key ({RATLS_TAG})",
            details={"binding": RATLS_TAG},
        )
    tried.append(Binding(False, f"{what}: the task's quote does not bind its key"))
    info = _acme_info(ctx)
    for key in info.quoted_hist_keys if info else ():
        if key.public_key != spki:
            continue
        if key.quote is None:
            tried.append(Binding(False, f"{what}: acme-info lists its key without a quote"))
            continue
        tried.append(
            _quote_of_task_app(ctx, key.quote.quote, key.quote.event_log, ZT_CERT_TAG, spki, what)
        )
        if tried[-1].bound:
            return tried[-1]
    return Binding(
        False,
        "; ".join(b.reason for b in tried),
        could_not_run=any(b.could_not_run for b in tried),
    )


def _embedded(ctx: CheckContext, embedded: EmbeddedAttestation, spki: bytes, what: str) -> Binding:
    """The RA-TLS certificate's own quote and event log."""
    found = _of_task_app(
        ctx,
        what,
        "its RA-TLS quote",
        embedded.quote,
        ratls_binding(spki),
        'its RA-TLS quote does not bind its key ("ratls-cert:")',
        lambda: embedded.events,
    )
    if isinstance(found, Binding):
        return found
    return Binding(
        True,
        f"{what}: its own RA-TLS quote, of the task's app, binds its key",
        details={
            "binding": "ratls-cert (embedded quote)",
            "binding_tcb_status": found.tcb_status,
        },
    )


def account_binding(ctx: CheckContext) -> Binding | None:
    """The ACME account: bound by the task's quote or by acme-info's account_quote."""
    assert ctx.attested is not None
    evidence: Evidence = ctx.request.evidence
    info = _acme_info(ctx)
    uri = evidence.acme_account_uri or (info.account_uri if info else "")
    if not uri:
        return None
    what = f"ACME account {uri}"
    if ctx.attested.register("report_data") == acme_binding(uri):
        return Binding(
            True,
            f"{what}: the task's own quote binds it ({ACME_ACCOUNT_TAG})",
            details={"binding": ACME_ACCOUNT_TAG, "account_uri": uri},
        )
    if info is None or info.account_uri != uri:
        return Binding(False, f"{what}: the task's quote does not bind it")
    if info.account_quote is None:
        return Binding(False, f"{what}: acme-info has no account quote ({info.account_problem})")
    quote = info.account_quote
    found = _quote_of_task_app(
        ctx, quote.quote, quote.event_log, ACME_ACCOUNT_TAG, uri.encode("utf-8"), what
    )
    found.details["account_uri"] = uri
    return found


def _outcome(bindings: list[Binding], **details: Any) -> Outcome:
    bound = [b for b in bindings if b.bound]
    if bound:
        return Outcome.passed("; ".join(b.reason for b in bound), **details, **bound[0].details)
    reason = "; ".join(b.reason for b in bindings)
    if any(b.could_not_run for b in bindings):
        return Outcome(CheckStatus.ERROR, reason, details)
    return Outcome.failed(reason, **details)


def check_tee_controlled_key(ctx: CheckContext) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    evidence = ctx.request.evidence
    details: dict[str, Any] = {"report_data": ctx.attested.register("report_data").hex()}
    bindings: list[Binding] = []
    if evidence.certificate_chain:
        leaf = load_chain(evidence.certificate_chain)[0]
        details["leaf_spki_sha256"] = hashlib.sha256(spki_of(leaf)).hexdigest()
        bindings.append(certificate_binding(ctx, leaf))
    account = account_binding(ctx)
    if account is not None:
        bindings.append(account)
    if not bindings:
        return Outcome.failed(
            "no key to check: the evidence has neither a certificate chain (RA-TLS) "
            "nor an ACME account (acme_account_uri or acme_info)",
            **details,
        )
    return _outcome(bindings, **details)


def check_certificate_key(ctx: CheckContext) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    pem = ctx.request.evidence.certificate_chain
    if not pem:
        return Outcome.failed("no certificate chain in the evidence")
    chain = load_chain(pem)
    leaf = chain[0]
    details: dict[str, Any] = {
        "chain_length": len(chain),
        "leaf_subject": leaf.subject.rfc4514_string(),
        "leaf_not_after": leaf.not_valid_after_utc.isoformat(),
        "leaf_spki_sha256": hashlib.sha256(spki_of(leaf)).hexdigest(),
        "ratls": embedded_attestation(leaf) is not None,
    }
    try:
        verify_chain(chain, ctx.request.evaluated_at)
    except ChainProblem as exc:
        return Outcome.failed(f"certificate chain does not hold: {exc}", **details)
    domain = ctx.request.model_or_domain.strip().lower()
    # RA-TLS certificates name no domain: their trust is the attested key.
    if "." in domain and not details["ratls"] and not names_domain(leaf, domain):
        return Outcome.failed(
            f"certificate {describe(leaf)} does not name the task's domain {domain}", **details
        )
    binding = certificate_binding(ctx, leaf)
    if binding.bound:
        return Outcome.passed(f"chain valid; {binding.reason}", **details, **binding.details)
    if binding.could_not_run:
        return Outcome(CheckStatus.ERROR, f"chain valid; {binding.reason}", details)
    return Outcome.failed(
        f"chain valid, but no verified quote of the task's app binds the key of "
        f"{describe(leaf)}: {binding.reason}",
        **details,
    )


def _domain_quote_problem(ctx: CheckContext, attested: Any, quote: Evidence) -> str:
    """Why a verified acme-info quote is not one the domain checks accept, or "":
    it must attest the task's app-id or the gateway's (request.gateway_app_id)."""
    try:
        events = parse_event_log(quote.event_log) if quote.event_log is not None else None
        theirs = app_identity(attested, events).app_id
    except (IdentityProblem, ValueError) as exc:
        return f"cannot tell whose quote it is ({exc})"
    accepted = {ctx.request.gateway_app_id.lower().removeprefix("0x")} - {""}
    with contextlib.suppress(IdentityProblem):  # no task identity: the gateway's only
        accepted.add(task_identity(ctx).app_id)
    if theirs not in accepted:
        return f"its quote attests app-id {theirs}, neither the task's app nor its gateway"
    return ""


def attested_spkis(ctx: CheckContext) -> tuple[set[bytes], list[str], set[bytes]]:
    """Certificate keys bound by verified quotes (for ct_log): the leaf the
    task's quote binds, and every acme-info key whose zt-cert quote verifies
    and binds it. Returns (keys, why each other key was not taken, the keys
    whose quote could not be checked here)."""
    keys: set[bytes] = set()
    skipped: list[str] = []
    unverifiable: set[bytes] = set()
    if ctx.attested is None:
        return keys, skipped, unverifiable
    pem = ctx.request.evidence.certificate_chain
    if pem:
        spki = spki_of(load_chain(pem)[0])
        if ctx.attested.register("report_data") == ratls_binding(spki):
            keys.add(spki)
    info = _acme_info(ctx)
    for i, key in enumerate(info.quoted_hist_keys if info else ()):
        what = f"quoted_hist_keys[{i}]"
        if key.quote is None:
            skipped.append(f"{what}: {key.problem}")
            continue
        try:
            attested, problem = (
                ctx.verify_quote(key.quote.quote) if ctx.verify_quote else (None, "no verifier")
            )
        except QuoteUnverifiable as exc:
            skipped.append(f"{what}: cannot be verified here ({exc})")
            unverifiable.add(key.public_key)
            continue
        if attested is None:
            skipped.append(f"{what}: quote does not verify ({problem})")
        elif attested.register("report_data") != zt_cert_binding(key.public_key):
            skipped.append(f'{what}: report_data is not sha512("zt-cert:" || public_key)')
        elif problem := _domain_quote_problem(ctx, attested, key.quote):
            skipped.append(f"{what}: {problem}")
        else:
            keys.add(key.public_key)
    return keys, skipped, unverifiable


def attested_account_uri(ctx: CheckContext) -> tuple[str | None, str, bool]:
    """The ACME account a verified quote binds (for dns_caa): (uri, "", False),
    or (None, why, whether the quote could not be checked here)."""
    if ctx.attested is None:
        return None, "the task's quote is not verified", False
    evidence = ctx.request.evidence
    info = _acme_info(ctx)
    uri = evidence.acme_account_uri or (info.account_uri if info else "")
    if not uri:
        return None, "the evidence names no ACME account (acme_account_uri or acme_info)", False
    if ctx.attested.register("report_data") == acme_binding(uri):
        return uri, "", False
    if info is None or info.account_uri != uri or info.account_quote is None:
        return None, f"no quote binds the ACME account {uri}", False
    try:
        attested, problem = (
            ctx.verify_quote(info.account_quote.quote) if ctx.verify_quote else (None, "")
        )
    except QuoteUnverifiable as exc:
        return None, f"the account quote cannot be verified here ({exc})", True
    if attested is None:
        return None, f"the account quote does not verify ({problem})", False
    if attested.register("report_data") != acme_binding(uri):
        return (
            None,
            f'the account quote\'s report_data is not sha512("acme-account:" || {uri})',
            False,
        )
    if problem := _domain_quote_problem(ctx, attested, info.account_quote):
        return None, f"the account quote: {problem}", False
    return uri, "", False
