"""Plain data types of the verification domain (picklable, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from shared.attestation import CHECK_NAMES
from shared.attestation import VerificationFlags as VerificationFlags  # the one, re-exported

if TYPE_CHECKING:
    from .chain import ChainEvidence

AppConfigType = Literal["redpill", "phala_cloud", ""]

CHECK_ORDER = CHECK_NAMES  # the order checks run and are reported in


@dataclass(frozen=True)
class Evidence:
    """Everything the app presents about itself. Only `quote` is mandatory."""

    quote: bytes
    event_log: str | None = None
    vm_config: str | None = None
    report_data: str | None = None
    app_compose: str | None = None
    certificate_chain: str | None = None
    collateral: str | None = None
    acme_account_uri: str | None = None
    acme_info: str | None = None  # the gateway's /.dstack/acme-info JSON


class CheckStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome, with the reason a person reads and the evidence used."""

    name: str
    status: CheckStatus
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    # Which attested part it is about ("app/instance:<id>", "kms", "gateway"); ""
    # for a single-quote verification, or for a check's result over all parts.
    part: str = ""

    @property
    def passed(self) -> bool:
        return self.status is CheckStatus.PASSED

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "details": self.details,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.part:
            out["part"] = self.part
        return out


@dataclass(frozen=True)
class VerificationRequest:
    """A task as the engine sees it. `evaluated_at` must be timezone-aware."""

    evidence: Evidence
    evaluated_at: datetime
    task_id: str = ""
    app_id: str = ""
    app_config_type: AppConfigType = ""
    model_or_domain: str = ""
    contract_address: str = ""
    flags: VerificationFlags = field(default_factory=VerificationFlags)
    expected_compose_hash: str = ""
    # The app's whole trust chain (phala_cloud): when set, every part is verified
    # and `evidence` is unused.
    chain: ChainEvidence | None = None
    # KMS CA public keys (SPKI DER, hex) trusted for this request besides the
    # configured ones (the CLI's --kms-ca-pubkey).
    trusted_kms_ca_pubkeys: tuple[str, ...] = ()
    # The gateway's app id (kms_info.gateway_app_id, hex): the app whose
    # acme-info quotes the domain checks accept besides the task's own.
    gateway_app_id: str = ""

    def __post_init__(self) -> None:
        if self.evaluated_at.tzinfo is None or self.evaluated_at.utcoffset() is None:
            raise ValueError("evaluated_at must be timezone-aware")


@dataclass(frozen=True)
class Report:
    """The full, signed-to-be verification report."""

    task_id: str
    verdict: Literal["passed", "failed"]
    checks: tuple[CheckResult, ...]
    quote: dict[str, Any]
    tcb_status: str
    advisory_ids: tuple[str, ...]
    evidence_digests: dict[str, str]
    timings_ms: dict[str, float]
    verifier_version: str
    evaluated_at: datetime
    request: dict[str, Any] = field(default_factory=dict)
    # A trust chain's every part's results (each with its `part`); `checks` then
    # holds each check's result over all parts.
    part_checks: tuple[CheckResult, ...] = ()
    # A trust chain's parts: each one's verdict, quote summary and digests, and the links.
    parts: tuple[dict[str, Any], ...] = ()
    chain: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def check(self, name: str) -> CheckResult:
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
            "quote": self.quote,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "evidence_digests": self.evidence_digests,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "verifier_version": self.verifier_version,
            "evaluated_at": self.evaluated_at.isoformat().replace("+00:00", "Z"),
            "request": self.request,
        } | (
            {
                "part_checks": [c.to_dict() for c in self.part_checks],
                "parts": list(self.parts),
                "chain": self.chain,
            }
            if self.parts
            else {}
        )


def flags_to_dict(flags: VerificationFlags) -> dict[str, bool]:
    # Not dataclasses.asdict: its deep copy is measurable per verification.
    return {name: getattr(flags, name) for name in CHECK_ORDER}
