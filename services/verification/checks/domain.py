"""dns_caa and ct_log: what the public DNS and CT logs say about the app's domain.

Both go through an injected WebFetcher so the engine stays free of I/O it does
not own, and tests can serve recorded answers.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from ..ratls import spki_of
from .context import CheckContext, Outcome, unverified
from .keys import attested_account_uri, attested_spkis

CAA_TYPE = 257
MAX_CT_ENTRIES = 50


class WebFetcher(Protocol):
    """Synchronous GET against an operator-configured endpoint."""

    def get_json(self, url: str, params: dict[str, str], headers: dict[str, str]) -> Any: ...

    def get_bytes(self, url: str, params: dict[str, str]) -> bytes: ...


def _domain(ctx: CheckContext) -> str:
    value = ctx.request.model_or_domain.strip().lower().rstrip(".")
    return value if "." in value and "/" not in value else ""


def parse_caa(data: str) -> tuple[str, str] | None:
    """(tag, value) from a DoH CAA answer, textual or RFC 3597 hex form."""
    text = data.strip()
    if text.startswith("\\#"):
        parts = text.split()
        try:
            raw = bytes.fromhex("".join(parts[2:]))
        except ValueError:
            return None
        if len(raw) < 2 or len(raw) < 2 + raw[1]:
            return None
        tag_len = raw[1]
        return raw[2 : 2 + tag_len].decode("ascii", "replace").lower(), raw[2 + tag_len :].decode(
            "utf-8", "replace"
        )
    parts = text.split(None, 2)
    if len(parts) != 3:
        return None
    return parts[1].lower(), parts[2].strip().strip('"')


def _caa_account(value: str) -> str:
    """accounturi parameter of an issue value such as 'letsencrypt.org; accounturi=...'."""
    for param in value.split(";")[1:]:
        key, _, val = param.strip().partition("=")
        if key.strip().lower() == "accounturi":
            return val.strip()
    return ""


def check_dns_caa(ctx: CheckContext, fetcher: WebFetcher | None, doh_url: str) -> Outcome:
    if fetcher is None or not doh_url:
        return Outcome.error("dns_caa is enabled but no DNS-over-HTTPS endpoint is configured")
    domain = _domain(ctx)
    if not domain:
        return Outcome.failed("no domain in the task (model_or_domain) to look up CAA records for")
    if ctx.attested is None:
        return unverified(ctx)
    account, why, could_not_run = attested_account_uri(ctx)
    if account is None:
        reason = f"no attested ACME account: {why}"
        return Outcome.error(reason) if could_not_run else Outcome.failed(reason)
    # RFC 8659: the relevant record set is the closest one up the tree.
    labels = domain.split(".")
    records: list[tuple[str, str]] = []
    owner = domain
    for i in range(len(labels) - 1):
        owner = ".".join(labels[i:])
        try:
            answer = fetcher.get_json(
                doh_url, {"name": owner, "type": "CAA"}, {"accept": "application/dns-json"}
            )
        except Exception as exc:
            return Outcome.error(f"DNS-over-HTTPS lookup failed: {exc}")
        rows = answer.get("Answer", []) if isinstance(answer, dict) else []
        records = [
            parsed
            for row in rows
            if isinstance(row, dict) and row.get("type") == CAA_TYPE
            for parsed in [parse_caa(str(row.get("data", "")))]
            if parsed is not None
        ]
        if records:
            break
    details: dict[str, Any] = {
        "domain": domain,
        "owner": owner,
        "records": [list(r) for r in records],
    }
    issuing = [(tag, value) for tag, value in records if tag in ("issue", "issuewild")]
    if not issuing:
        return Outcome.failed("no CAA issue records: any CA may issue for this domain", **details)
    strays = [value for _, value in issuing if _caa_account(value) != account]
    if strays:
        return Outcome.failed(
            f"CAA records allow issuance outside the attested ACME account: {'; '.join(strays)}",
            **details,
        )
    return Outcome.passed(
        "every CAA issue record is restricted to the attested ACME account", **details
    )


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_ct_log(ctx: CheckContext, fetcher: WebFetcher | None, ct_log_url: str) -> Outcome:
    if fetcher is None or not ct_log_url:
        return Outcome.error("ct_log is enabled but no CT log search endpoint is configured")
    domain = _domain(ctx)
    if not domain:
        return Outcome.failed("no domain in the task (model_or_domain) to search CT logs for")
    if ctx.attested is None:
        return unverified(ctx)
    keys, skipped, unverifiable = attested_spkis(ctx)
    if not keys and not unverifiable:
        return Outcome.failed(
            "no attested TLS key: neither the task's quote (ratls-cert) nor a verified "
            f"zt-cert quote in acme-info binds a certificate key ({'; '.join(skipped) or 'none'})"
        )
    at = ctx.request.evaluated_at
    try:
        entries = fetcher.get_json(ct_log_url, {"q": domain, "output": "json"}, {})
    except Exception as exc:
        return Outcome.error(f"CT log search failed: {exc}")
    current = [
        e
        for e in (entries if isinstance(entries, list) else [])
        if isinstance(e, dict)
        and (nb := _utc(e.get("not_before"))) is not None
        and (na := _utc(e.get("not_after"))) is not None
        and nb <= at <= na
    ]
    details: dict[str, Any] = {"domain": domain, "current_entries": len(current)}
    if not current:
        return Outcome.failed(
            "no certificate for the domain is logged as valid at the evaluation time", **details
        )
    if len(current) > MAX_CT_ENTRIES:
        return Outcome.failed(f"more than {MAX_CT_ENTRIES} current certificates logged", **details)
    unattested: list[str] = []
    unchecked: list[str] = []
    for entry in current:
        try:
            body = fetcher.get_bytes(ct_log_url, {"d": str(entry.get("id"))})
            cert = (
                x509.load_pem_x509_certificate(body)
                if b"-----BEGIN" in body
                else x509.load_der_x509_certificate(body)
            )
        except Exception as exc:
            return Outcome.error(
                f"cannot fetch logged certificate {entry.get('id')}: {exc}", **details
            )
        logged = spki_of(cert)
        if logged in unverifiable and logged not in keys:
            unchecked.append(str(entry.get("id")))
        elif logged not in keys:
            unattested.append(str(entry.get("id")))
    details["attested_spki_sha256"] = sorted(hashlib.sha256(k).hexdigest() for k in keys)
    details["keys_not_taken"] = skipped
    if unattested:
        return Outcome.failed(
            f"logged certificate(s) {', '.join(unattested)} carry a key that is not attested",
            **details,
        )
    if unchecked:
        return Outcome.error(
            f"the quotes of the keys of logged certificate(s) {', '.join(unchecked)} "
            "cannot be verified here",
            **details,
        )
    return Outcome.passed(
        "every current logged certificate carries a key a verified quote binds", **details
    )
