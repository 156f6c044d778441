"""hardware: the quote's signature chain to Intel's root and its TCB status."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import dcap_qvl

from ..collateral import CollateralBundle, parse_collateral
from ..errors import EvidenceMalformed
from ..quote import ParsedQuote
from .context import AttestedQuote, CheckContext, Outcome


@lru_cache(maxsize=32)
def _load_collateral(text: str) -> tuple[CollateralBundle, dcap_qvl.QuoteCollateralV3]:
    # The same bundle serves every quote of a platform for a month: parse once.
    # The first line raises EvidenceMalformed for unreadable collateral.
    bundle = parse_collateral(text)
    return bundle, dcap_qvl.QuoteCollateralV3.from_json(text)


def load_collateral(text: str) -> tuple[CollateralBundle, dcap_qvl.QuoteCollateralV3]:
    try:
        return _load_collateral(text)
    except ValueError as exc:  # from dcap-qvl; parse_collateral raises EvidenceMalformed
        raise EvidenceMalformed("collateral", f"rejected by dcap-qvl: {exc}") from None


def attest(
    quote: bytes, parsed: ParsedQuote, collateral_text: str, at: datetime
) -> tuple[AttestedQuote | None, str, CollateralBundle]:
    """Verify `quote` with dcap-qvl at `at`. Returns (attested, problem, bundle).

    The attested fields are those of `parsed`, the structural parse of the very
    bytes dcap-qvl has just verified: the signature covers them, so they are
    the verified values. Reading them back from dcap-qvl's JSON report instead
    would cost a serialisation round trip per quote; test_quote.py checks that
    both agree on every vector.
    """
    bundle, collateral = load_collateral(collateral_text)
    if not bundle.covers(at):
        return (
            None,
            f"collateral is valid {bundle.window}, which does not contain "
            f"the evaluation time {at.isoformat()}",
            bundle,
        )
    try:
        verified = dcap_qvl.verify(quote, collateral, int(at.timestamp()))
    except ValueError as exc:
        # dcap-qvl reports a chain of causes on several lines; one line reads better.
        return (
            None,
            " / ".join(line.strip() for line in str(exc).splitlines() if line.strip()),
            bundle,
        )
    qe_status = platform_status = verified.status
    if verified.status != "UpToDate":
        # Only then can the QE and the platform differ; say which one is behind.
        doc = json.loads(verified.to_json())
        qe_status = doc.get("qe_status", {}).get("status", "")
        platform_status = doc.get("platform_status", {}).get("status", "")
    return (
        AttestedQuote(
            tcb_status=verified.status,
            advisory_ids=tuple(verified.advisory_ids),
            body_type=parsed.body_type,
            fields=parsed.fields,
            qe_status=qe_status,
            platform_status=platform_status,
        ),
        "",
        bundle,
    )


def debug_or_foreign_seam(fields: dict[str, object]) -> str:
    """Why the verified report is unacceptable whatever its TCB status, or "".

    dstack-attest validate_tcb: a DEBUG TD (td_attributes bit 0; SGX attributes
    bit 1) lets the host read and change its memory, and a TDX module not
    signed by Intel (mr_signer_seam non-zero) or a service TD (mr_service_td
    non-zero) is not the platform the quote describes.
    """

    def raw(name: str) -> bytes:
        value = fields.get(name)
        return bytes.fromhex(value) if isinstance(value, str) else b""

    td_attributes = raw("td_attributes")
    if td_attributes:
        if td_attributes[0] & 0x01:
            return "the TD runs in DEBUG mode (td_attributes bit 0 is set)"
        if any(raw("mr_signer_seam")):
            return "mr_signer_seam is not zero: the TDX module is not Intel's"
        if any(raw("mr_service_td")):
            return "mr_service_td is not zero"
        return ""
    attributes = raw("attributes")
    if attributes and attributes[0] & 0x02:
        return "the enclave runs in DEBUG mode (attributes bit 1 is set)"
    return ""


def check_hardware(ctx: CheckContext, allowed_statuses: tuple[str, ...]) -> Outcome:
    details: dict[str, object] = {"allowed_tcb_statuses": list(allowed_statuses)}
    if ctx.collateral is not None:
        details["collateral_fmspc"] = ctx.collateral.fmspc
        details["collateral_window"] = ctx.collateral.window
    attested = ctx.attested
    if attested is None:
        return Outcome.failed(f"quote verification failed: {ctx.attestation_problem}", **details)
    details.update(
        tcb_status=attested.tcb_status,
        advisory_ids=list(attested.advisory_ids),
        qe_status=attested.qe_status,
        platform_status=attested.platform_status,
        report_body=attested.body_type,
    )
    refused = debug_or_foreign_seam(attested.fields)
    if refused:
        return Outcome.failed(f"signature chain verified, but {refused}", **details)
    if attested.tcb_status not in allowed_statuses:
        advisories = ", ".join(attested.advisory_ids) or "none"
        return Outcome.failed(
            f"signature chain verified, but TCB status {attested.tcb_status} is not allowed "
            f"(allowed: {', '.join(allowed_statuses)}; advisories: {advisories})",
            **details,
        )
    return Outcome.passed(
        f"signature chain to the Intel SGX Root CA verified; TCB status {attested.tcb_status}",
        **details,
    )
