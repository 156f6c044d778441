"""Verifying a trust chain part by part (the engine's multi-part path).

Each part (every running instance of the app, the KMS, the gateway) is
verified by the engine's own per-part run, then the links are applied (see
chain.py). This module gathers the per-part results and aggregates them per
check; the verdict is decided by the engine (VerificationEngine.verify) over
every part's results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .chain import (
    INFRASTRUCTURE_CHECKS,
    PART_APP,
    PART_GATEWAY,
    PART_KMS,
    ChainEvidence,
    PartEvidence,
    gateway_app_id_problem,
    kms_key_of,
    link_to_kms,
    normalize_key,
    ratls_report_data,
)
from .checks.context import AttestedQuote, Outcome
from .checks.hardware import debug_or_foreign_seam
from .model import CHECK_ORDER, CheckResult, CheckStatus, VerificationRequest
from .quote import parse_quote

if TYPE_CHECKING:
    from .engine import PartRun, VerificationEngine


@dataclass
class ChainRun:
    """Every part's results (enabled checks only, each with its part) and the summaries."""

    part_results: list[CheckResult] = field(default_factory=list)
    runs: list[PartRun] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    chain: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _part_request(
    request: VerificationRequest, part: PartEvidence, own: bool
) -> VerificationRequest:
    """The request one part is verified with: the task's identity for the app's own
    instances, the part's own expectations for the KMS and the gateway."""
    if own:
        return replace(request, evidence=part.evidence, chain=None)
    return replace(
        request,
        evidence=part.evidence,
        chain=None,
        app_id=part.expected_app_id,
        expected_compose_hash="",
        contract_address="",
        model_or_domain="",
    )


def _absent(part: str, checks: list[str], reason: str, status: CheckStatus) -> list[CheckResult]:
    return [CheckResult(name, status, reason, part=part) for name in checks]


def _replace_outcome(run: PartRun, name: str, outcome: Outcome) -> None:
    for i, result in enumerate(run.results):
        if result.name == name:
            run.results[i] = CheckResult(
                name, outcome.status, outcome.reason, outcome.details, result.duration_ms, run.part
            )
    run.outcomes[name] = outcome


def _acceptable(engine: VerificationEngine, attested: AttestedQuote | None) -> bool:
    """A verified quote the hardware policy accepts (status allowed, not DEBUG)."""
    return (
        attested is not None
        and attested.tcb_status in engine.settings.allowed_tcb_statuses
        and not debug_or_foreign_seam(attested.fields)
    )


def _trusted_kms_keys(
    engine: VerificationEngine,
    request: VerificationRequest,
    kms: PartEvidence | None,
    kms_run: PartRun | None,
    wanted: set[str],
) -> dict[str, str]:
    """Each trusted KMS CA key (hex) and why: pinned, or bound by a verified KMS
    certificate quote (RA-TLS report_data). Only the keys the app names are tried."""
    trusted: dict[str, str] = {}
    pinned = {normalize_key(k) for k in engine.settings.trusted_kms_ca_pubkeys}
    pinned |= {normalize_key(k) for k in request.trusted_kms_ca_pubkeys}
    for key in wanted & pinned:
        trusted[key] = "is pinned (TRUSTED_KMS_CA_PUBKEYS / --kms-ca-pubkey)"
    unbound = {k for k in wanted - set(trusted) if _is_hex(k)}
    if not unbound or kms is None:
        return trusted
    quotes: list[AttestedQuote | None] = [kms_run.attested if kms_run else None]
    for raw in kms.certificate_quotes:
        parsed = parse_quote(raw)
        attested, _, _ = engine.attest_quote(raw, parsed, None, request.evaluated_at)
        quotes.append(attested)
    for attested in quotes:
        if not _acceptable(engine, attested):
            continue
        assert attested is not None
        report_data = attested.register("report_data")
        for key in list(unbound):
            if report_data == ratls_report_data(bytes.fromhex(key)):
                trusted[key] = "is bound by the verified quote of a KMS certificate (RA-TLS)"
                unbound.discard(key)
    return trusted


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


def _summary(run: PartRun, enabled: list[str]) -> dict[str, Any]:
    from .engine import evidence_digests

    passed = all(r.passed for r in run.results if r.name in enabled) and bool(enabled)
    return {
        "part": run.part,
        "verdict": "passed" if passed else "failed",
        "checks": {r.name: r.status.value for r in run.results if r.name in enabled},
        "tcb_status": run.attested.tcb_status if run.attested else "",
        "advisory_ids": list(run.attested.advisory_ids) if run.attested else [],
        "quote": run.quote_summary(),
        "evidence_digests": evidence_digests(run.evidence, run.parsed),
    }


def run_chain(engine: VerificationEngine, request: VerificationRequest) -> ChainRun:
    chain: ChainEvidence | None = request.chain
    assert chain is not None
    out = ChainRun()
    if not request.gateway_app_id and chain.kms_info.get("gateway_app_id"):
        # The domain checks of the app's instances accept the gateway's acme-info quotes.
        gateway_app_id = normalize_key(str(chain.kms_info["gateway_app_id"]))
        request = replace(request, gateway_app_id=gateway_app_id)
    enabled = request.flags.enabled()
    infra = [name for name in enabled if name in INFRASTRUCTURE_CHECKS]
    started = time.perf_counter()

    def run_part(part: PartEvidence, checks: list[str], own: bool) -> PartRun:
        run = engine.verify_part(_part_request(request, part, own), checks, part.part)
        out.runs.append(run)
        return run

    # The KMS first: the app's link to it needs its verified quote.
    kms_run = run_part(chain.kms, infra, own=False) if chain.kms else None
    instance_runs = [run_part(inst, enabled, own=True) for inst in chain.instances]
    gateway_run = run_part(chain.gateway, infra, own=False) if chain.gateway else None

    # The app-to-KMS link, on each instance's source_code.
    links: dict[str, Any] = {}
    if "source_code" in enabled and instance_runs:
        wanted = {kms_key_of(r.outcomes["source_code"])[0] for r in instance_runs} - {""}
        trusted = _trusted_kms_keys(engine, request, chain.kms, kms_run, wanted)
        for run in instance_runs:
            linked = link_to_kms(run.outcomes["source_code"], trusted)
            _replace_outcome(run, "source_code", linked)
            links[run.part] = {
                "status": linked.status.value,
                "kms_link": linked.details.get("kms_link"),
            }
        out.chain["trusted_kms_ca_pubkeys"] = trusted
    # The gateway's app id is checked by its source_code against kms_info.gateway_app_id.
    problem = gateway_app_id_problem(chain)
    if problem and gateway_run is not None and "source_code" in infra:
        current = gateway_run.outcomes["source_code"]
        _replace_outcome(gateway_run, "source_code", Outcome.error(problem, **current.details))

    for run in out.runs:
        checks = enabled if run.part.startswith(PART_APP) else infra
        out.part_results.extend(r for r in run.results if r.name in checks)
        out.parts.append(_summary(run, checks))
    if not chain.instances:
        reason = "the app has no running instance (no instance with a quote)"
        out.part_results.extend(_absent(PART_APP, enabled, reason, CheckStatus.FAILED))
        out.parts.append({"part": PART_APP, "verdict": "failed", "reason": reason})
    for name, part_run in ((PART_KMS, kms_run), (PART_GATEWAY, gateway_run)):
        if part_run is None and infra:
            why = chain.missing.get(name, "absent from the evidence")
            reason = f"{why}: the {name} cannot be verified"
            out.part_results.extend(_absent(name, infra, reason, CheckStatus.ERROR))
            out.parts.append({"part": name, "verdict": "failed", "reason": reason})
    out.chain.update(
        app_id=chain.app_id,
        kms_info=chain.kms_info,
        links={
            "app_to_kms": links,
            "gateway_app_id": chain.gateway.expected_app_id if chain.gateway else "",
        },
    )
    out.timings["chain"] = (time.perf_counter() - started) * 1000
    return out


def aggregate(part_results: list[CheckResult], enabled: list[str]) -> list[CheckResult]:
    """One result per check over all parts: passed only if it passed on every part."""
    by_name: dict[str, list[CheckResult]] = {}
    for result in part_results:
        by_name.setdefault(result.name, []).append(result)
    out: list[CheckResult] = []
    for name in CHECK_ORDER:
        results = by_name.get(name, [])
        if name not in enabled or not results:
            out.append(CheckResult(name, CheckStatus.SKIPPED, "not enabled for this task"))
            continue
        statuses = {r.status for r in results}
        parts = {r.part: r.status.value for r in results}
        if statuses == {CheckStatus.PASSED}:
            reason = f"passed on every part ({', '.join(parts)})"
            status = CheckStatus.PASSED
        else:
            status = next(
                s
                for s in (CheckStatus.FAILED, CheckStatus.ERROR, CheckStatus.SKIPPED)
                if s in statuses
            )
            reason = "; ".join(f"{r.part}: {r.reason}" for r in results if not r.passed)
        duration = sum(r.duration_ms for r in results)
        out.append(CheckResult(name, status, reason, {"parts": parts}, duration))
    return out
