"""The dstack trust chain of a Phala Cloud app: its parts and the links between them.

A Phala Cloud app is trusted through three attested parts: its running
instances, the KMS that gives it its keys and the gateway that terminates its
TLS. Each part is verified on its own (the engine runs the checks); this
module holds the multi-part evidence and the pure link rules:
- the app's key-provider event must be {"name": "kms", "id": K}, K the KMS CA
  public key (SubjectPublicKeyInfo DER, hex), trusted when a verified KMS
  certificate quote binds it (RA-TLS: report_data = sha512("ratls-cert:" || K))
  or when it is pinned (TRUSTED_KMS_CA_PUBKEYS, --kms-ca-pubkey);
- the gateway's attested app-id must equal kms_info.gateway_app_id (the
  engine passes it as the gateway part's expected app id).
A link that cannot be established is an error, never a pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from .checks.context import Outcome
from .model import CheckStatus, Evidence, VerificationRequest

PART_APP = "app"
PART_KMS = "kms"
PART_GATEWAY = "gateway"
# The checks a KMS or gateway part runs (when the task enables them): what its
# evidence can show. The key and domain checks are about the app.
INFRASTRUCTURE_CHECKS = ("hardware", "os", "source_code")


def instance_part(instance_id: str) -> str:
    return f"{PART_APP}/instance:{instance_id}"


@dataclass(frozen=True)
class PartEvidence:
    """One attested part: its evidence, and what its identity must be."""

    part: str
    evidence: Evidence
    # The app id this part must attest (gateway: kms_info.gateway_app_id); "" = any.
    expected_app_id: str = ""
    # Further quotes of this part's certificates (KMS: app_certificates entries
    # other than the one whose quote is `evidence.quote`), hex-decoded.
    certificate_quotes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ChainEvidence:
    """What the Phala Cloud attestations API says about an app, part by part."""

    app_id: str
    instances: tuple[PartEvidence, ...]
    kms: PartEvidence | None
    gateway: PartEvidence | None
    contract_address: str = ""
    # kms_info as the API gives it (url, version, gateway_app_id, ...): reported.
    kms_info: dict[str, Any] = field(default_factory=dict)
    # Why the KMS or the gateway part is absent, for the report.
    missing: dict[str, str] = field(default_factory=dict)


def ratls_report_data(spki_der: bytes) -> bytes:
    """dstack QuoteContentType::RaTlsCert: the report_data that binds a key."""
    return hashlib.sha512(b"ratls-cert:" + spki_der).digest()


def normalize_key(hex_key: str) -> str:
    return hex_key.strip().lower().removeprefix("0x")


def kms_key_of(source_code: Outcome) -> tuple[str, str]:
    """(K, problem) from a source_code outcome's key_provider detail."""
    info = source_code.details.get("key_provider")
    if not isinstance(info, dict) or "name" not in info:
        return "", "the instance has no key-provider event before system-ready"
    if info["name"] != "kms":
        return "", (
            f"the key-provider event names {info['name']!r}, not the KMS: the app does "
            "not take its keys from the KMS this chain verifies"
        )
    key = normalize_key(str(info.get("id", "")))
    if not key:
        return "", "the key-provider event names the KMS without its CA key id"
    return key, ""


def link_to_kms(source_code: Outcome, trusted: dict[str, str]) -> Outcome:
    """The instance's source_code outcome with the app-to-KMS link applied.

    `trusted` maps each trusted KMS CA key (hex) to why it is trusted. A
    failed source_code stays failed (the link is reported beside it).
    """
    key, problem = kms_key_of(source_code)
    details = dict(source_code.details)
    if problem:
        details["kms_link"] = problem
        status = CheckStatus.FAILED if source_code.status is CheckStatus.PASSED else None
        return _merge(source_code, details, status, f"app-to-KMS link: {problem}")
    why = trusted.get(key)
    if why is None:
        reason = (
            f"app-to-KMS link cannot be established: KMS CA key {key[:16]}... is neither bound "
            "by a verified KMS certificate quote nor pinned (TRUSTED_KMS_CA_PUBKEYS)"
        )
        details["kms_link"] = reason
        status = CheckStatus.ERROR if source_code.status is CheckStatus.PASSED else None
        return _merge(source_code, details, status, reason)
    details["kms_link"] = f"KMS CA key {key} {why}"
    if source_code.status is not CheckStatus.PASSED:
        return replace(source_code, details=details)
    return Outcome(
        CheckStatus.PASSED,
        f"{source_code.reason}; the key provider is the KMS, whose CA key {why}",
        details,
    )


def _merge(
    outcome: Outcome, details: dict[str, Any], status: CheckStatus | None, reason: str
) -> Outcome:
    if status is None:  # already not passing: keep its own reason first
        return Outcome(outcome.status, f"{outcome.reason}; {reason}", details)
    return Outcome(status, reason, details)


def gateway_app_id_problem(chain: ChainEvidence) -> str:
    if chain.gateway is not None and not chain.gateway.expected_app_id:
        return "kms_info names no gateway_app_id: the gateway's app id cannot be checked"
    return ""


def with_fetched(
    request: VerificationRequest, fetched: Evidence | ChainEvidence
) -> VerificationRequest:
    """The request with what a fetcher returned: one quote's evidence, or a chain."""
    if isinstance(fetched, ChainEvidence):
        first = fetched.instances[0].evidence if fetched.instances else request.evidence
        return replace(request, evidence=first, chain=fetched)
    return replace(request, evidence=fetched)
