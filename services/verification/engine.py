"""VerificationEngine: runs the enabled checks over one request and builds the Report.

Synchronous and pure apart from what is injected (collateral store lookups,
the on-chain registry, the DNS/CT fetcher), so it runs unchanged in a pool
worker, the CLI and tests.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from .checks.context import (
    AttestedQuote,
    CheckContext,
    Outcome,
    QuoteUnverifiable,
    QuoteVerifier,
)
from .checks.domain import WebFetcher, check_ct_log, check_dns_caa
from .checks.hardware import attest, check_hardware, debug_or_foreign_seam
from .checks.keys import check_certificate_key, check_tee_controlled_key
from .checks.os_image import check_os
from .checks.source_code import ComposeHashRegistry, check_source_code
from .collateral import CollateralBundle, CollateralStore, LocalCollateralCache, QuoteCollateralKey
from .errors import CollateralExpired, EvidenceMalformed
from .eventlog import Event, parse_event_log
from .evidence import validate_evidence
from .hexutil import decode_hex
from .model import (
    CHECK_ORDER,
    CheckResult,
    CheckStatus,
    Evidence,
    Report,
    VerificationFlags,
    VerificationRequest,
    flags_to_dict,
)
from .os_image_store import OsImageCatalog, build_os_image_store, load_entry_files
from .quote import ParsedQuote, parse_quote, signed_quote_digest
from .settings import VerificationSettings
from .version import VERIFIER_VERSION


def _sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None


@lru_cache(maxsize=32)
def _collateral_sha256(text: str) -> str:
    # One bundle serves a platform for a month: hash its ~20 KB once.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=256)
def _collateral_key(quote: bytes) -> QuoteCollateralKey:
    # dcap-qvl's FMSPC read costs about half a millisecond: once per quote.
    return QuoteCollateralKey.of_quote(quote)


# Results are frozen and their empty details are never written to, so one
# instance per check serves every report (a third of the results built per call).
_NOT_ENABLED = {
    name: CheckResult(name, CheckStatus.SKIPPED, "not enabled for this task")
    for name in CHECK_ORDER
}


def request_summary(request: VerificationRequest) -> dict[str, Any]:
    return {
        "task_id": request.task_id,
        "app_id": request.app_id,
        "app_config_type": request.app_config_type,
        "model_or_domain": request.model_or_domain,
        "contract_address": request.contract_address,
        "expected_compose_hash": request.expected_compose_hash,
        "flags": flags_to_dict(request.flags),
    }


@dataclass
class PartRun:
    """One part's verification: its results (all checks, in order) and what they used."""

    part: str
    results: list[CheckResult]
    outcomes: dict[str, Outcome]
    evidence: Evidence
    parsed: ParsedQuote
    attested: AttestedQuote | None
    attestation_problem: str
    timings: dict[str, float]

    def quote_summary(self) -> dict[str, Any]:
        # Verified fields when dcap-qvl verified the quote; otherwise the parsed
        # ones, clearly marked, so a reader can still see what was presented.
        parsed, attested = self.parsed, self.attested
        return {
            "version": parsed.version,
            "tee_type": "TDX" if parsed.is_tdx else "SGX",
            "body_type": parsed.body_type,
            "signed_length": parsed.signed_length,
            "verified": attested is not None,
            "fields": dict(attested.fields) if attested else dict(parsed.fields),
        }


def check_flags(flags: VerificationFlags) -> None:
    """os and source_code read measurements that only a verified quote makes true."""
    needing = [name for name in ("os", "source_code") if getattr(flags, name)]
    if needing and not flags.hardware:
        raise EvidenceMalformed(
            "flags", f"{' and '.join(needing)} need hardware (a verified quote); enable hardware"
        )


class VerificationEngine:
    def __init__(
        self,
        settings: VerificationSettings | None = None,
        *,
        collateral_store: CollateralStore | None = None,
        compose_registry: ComposeHashRegistry | None = None,
        web_fetcher: WebFetcher | None = None,
        os_catalog: OsImageCatalog | None = None,
    ) -> None:
        self.settings = settings or VerificationSettings()
        s = self.settings
        if os_catalog is None:
            os_catalog = OsImageCatalog(
                load_entry_files(s.os_allowlist_paths),
                build_os_image_store(s.report_store) if s.os_images_in_store else None,
                s.os_images_cache_seconds,
            )
        self.os_catalog = os_catalog
        self.collateral_store = collateral_store or CollateralStore(
            local_dir=s.collateral_path, cache=LocalCollateralCache(s.collateral_cache_path)
        )
        if compose_registry is None and s.eth_rpc_url:
            from .onchain import EthRpcComposeRegistry

            compose_registry = EthRpcComposeRegistry(s.eth_rpc_url, s.fetch_timeout_seconds)
        self.compose_registry = compose_registry
        if web_fetcher is None and (s.doh_url or s.ct_log_url):
            from .fetchers import HttpWebFetcher

            web_fetcher = HttpWebFetcher(s.fetch_timeout_seconds, s.max_response_bytes)
        self.web_fetcher = web_fetcher
        self._checks: dict[str, Callable[[CheckContext], Outcome]] = {
            "hardware": lambda c: check_hardware(c, s.allowed_tcb_statuses),
            "os": lambda c: check_os(c, self.os_catalog, s.allow_dev_os_images),
            "source_code": lambda c: check_source_code(c, self.compose_registry),
            "tee_controlled_key": check_tee_controlled_key,
            "certificate_key": check_certificate_key,
            "dns_caa": lambda c: check_dns_caa(c, self.web_fetcher, s.doh_url),
            "ct_log": lambda c: check_ct_log(c, self.web_fetcher, s.ct_log_url),
        }

    def _collateral_text(
        self, quote: bytes, inline: str | None, at: datetime
    ) -> tuple[str | None, str]:
        """Inline collateral first, then the store; (text, why-missing)."""
        if inline:
            return inline, ""
        try:
            key = QuoteCollateralKey.of_quote(quote)
            found: CollateralBundle | None = self.collateral_store.find(key, at)
        except CollateralExpired as exc:
            return None, exc.message
        if found is None:
            return None, f"no collateral for FMSPC {key.fmspc} ({key.ca}) at hand"
        return found.json_text, ""

    def _quote_verifier(self, request: VerificationRequest) -> QuoteVerifier:
        """Verifies the further quotes of one request (RA-TLS certificates,
        acme-info keys) like the main one, each once."""
        cache: dict[bytes, tuple[AttestedQuote | None, str]] = {}
        at = request.evaluated_at
        allowed = self.settings.allowed_tcb_statuses

        main_key: list[QuoteCollateralKey] = []

        def collateral_for(quote: bytes) -> str:
            key = _collateral_key(quote)
            inline = request.evidence.collateral
            if inline and not main_key:
                main_key.append(_collateral_key(request.evidence.quote))
            if inline and key == main_key[0]:
                return inline
            try:
                found = self.collateral_store.find(key, at)
            except CollateralExpired as exc:
                raise QuoteUnverifiable(exc.message) from None
            if found is None:
                raise QuoteUnverifiable(f"no collateral for FMSPC {key.fmspc} ({key.ca}) at hand")
            return found.json_text

        def verify(quote: bytes) -> tuple[AttestedQuote | None, str]:
            if quote in cache:
                return cache[quote]
            try:
                parsed = parse_quote(quote)
                text = collateral_for(quote)
            except EvidenceMalformed as exc:
                cache[quote] = (None, f"unreadable quote: {exc}")
                return cache[quote]
            attested, problem, _ = attest(quote, parsed, text, at)
            result: tuple[AttestedQuote | None, str] = (attested, problem)
            if attested is not None:
                if attested.tcb_status not in allowed:
                    result = (None, f"TCB status {attested.tcb_status} is not allowed")
                elif why := debug_or_foreign_seam(attested.fields):
                    result = (None, why)
            cache[quote] = result
            return result

        return verify

    def verify(self, request: VerificationRequest) -> Report:
        """Verify one request. Raises EvidenceMalformed for unreadable evidence.

        The verdict is decided here and only here: it passes only when every
        enabled check of every part passed.
        """
        check_flags(request.flags)
        if request.expected_compose_hash:
            decode_hex(request.expected_compose_hash, "expected_compose_hash", expected_len=32)
        if request.chain is not None:
            return self._verify_chain(request)
        started = time.perf_counter()
        run = self.verify_part(request, request.flags.enabled())
        results = run.results
        enabled = set(request.flags.enabled())
        verdict_ok = bool(enabled) and all(r.passed for r in results if r.name in enabled)
        run.timings["total"] = (time.perf_counter() - started) * 1000
        return Report(
            task_id=request.task_id,
            verdict="passed" if verdict_ok else "failed",
            checks=tuple(results),
            quote=run.quote_summary(),
            tcb_status=run.attested.tcb_status if run.attested else "",
            advisory_ids=run.attested.advisory_ids if run.attested else (),
            evidence_digests=self._digests(request, run.parsed),
            timings_ms=run.timings,
            verifier_version=VERIFIER_VERSION,
            evaluated_at=request.evaluated_at,
            request=request_summary(request),
        )

    def _verify_chain(self, request: VerificationRequest) -> Report:
        from .chain_verify import aggregate, run_chain

        started = time.perf_counter()
        run = run_chain(self, request)
        enabled = request.flags.enabled()
        # Every enabled check of every part, the links included (chain_verify puts
        # them on the parts' source_code), and at least one part.
        verdict_ok = bool(enabled and run.part_results) and all(r.passed for r in run.part_results)
        first = run.runs[0] if run.runs else None
        app = next((r for r in run.runs if r.part.startswith("app")), first)
        timings = dict(run.timings)
        timings["total"] = (time.perf_counter() - started) * 1000
        return Report(
            task_id=request.task_id,
            verdict="passed" if verdict_ok else "failed",
            checks=tuple(aggregate(run.part_results, enabled)),
            quote=app.quote_summary() if app else {},
            tcb_status=app.attested.tcb_status if app and app.attested else "",
            advisory_ids=app.attested.advisory_ids if app and app.attested else (),
            evidence_digests=evidence_digests(app.evidence, app.parsed) if app else {},
            timings_ms=timings,
            verifier_version=VERIFIER_VERSION,
            evaluated_at=request.evaluated_at,
            request=request_summary(request),
            part_checks=tuple(run.part_results),
            parts=tuple(run.parts),
            chain=run.chain,
        )

    def verify_part(
        self, request: VerificationRequest, checks: list[str], part: str = ""
    ) -> PartRun:
        """Run `checks` over `request.evidence`; the others are reported not enabled."""
        started = time.perf_counter()
        evidence = request.evidence
        validate_evidence(evidence)
        parsed = parse_quote(evidence.quote)
        events: list[Event] | None = (
            parse_event_log(evidence.event_log) if evidence.event_log is not None else None
        )
        timings: dict[str, float] = {"parse": (time.perf_counter() - started) * 1000}

        # Verify the quote once, whether or not the hardware check is enabled:
        # every quote-dependent check needs the verified fields.
        t0 = time.perf_counter()
        attested, problem, bundle = self.attest_quote(
            evidence.quote, parsed, evidence.collateral, request.evaluated_at
        )
        timings["attestation"] = (time.perf_counter() - t0) * 1000

        ctx = CheckContext(
            request=request,
            parsed=parsed,
            attested=attested,
            attestation_problem=problem,
            collateral=bundle,
            events=events,
            verify_quote=self._quote_verifier(request),
        )
        enabled = set(checks)
        results: list[CheckResult] = []
        outcomes: dict[str, Outcome] = {}
        for name in CHECK_ORDER:
            if name not in enabled:
                results.append(_NOT_ENABLED[name])
                continue
            t0 = time.perf_counter()
            outcome = self._checks[name](ctx)
            elapsed = (time.perf_counter() - t0) * 1000
            timings[name] = elapsed
            outcomes[name] = outcome
            results.append(
                CheckResult(name, outcome.status, outcome.reason, outcome.details, elapsed, part)
            )
        return PartRun(part, results, outcomes, evidence, parsed, attested, problem, timings)

    def attest_quote(
        self, quote: bytes, parsed: ParsedQuote, inline_collateral: str | None, at: datetime
    ) -> tuple[AttestedQuote | None, str, CollateralBundle | None]:
        """dcap-qvl's verdict on `quote` at `at`: (attested, problem, collateral used)."""
        collateral_text, problem = self._collateral_text(quote, inline_collateral, at)
        if collateral_text is None:
            return None, problem, None
        return attest(quote, parsed, collateral_text, at)

    @staticmethod
    def _digests(request: VerificationRequest, parsed: ParsedQuote) -> dict[str, str]:
        return evidence_digests(request.evidence, parsed)


def evidence_digests(e: Evidence, parsed: ParsedQuote) -> dict[str, str]:
    digests = {
        "quote_sha256": signed_quote_digest(e.quote, parsed),
        "event_log_sha256": _sha256(e.event_log),
        "vm_config_sha256": _sha256(e.vm_config),
        "app_compose_sha256": _sha256(e.app_compose),
        "certificate_chain_sha256": _sha256(e.certificate_chain),
        "collateral_sha256": _collateral_sha256(e.collateral) if e.collateral else None,
    }
    return {k: v for k, v in digests.items() if v is not None}
