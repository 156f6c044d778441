"""Inline evidence: the dstack GetQuote JSON shape plus optional extras, bounded."""

from __future__ import annotations

import json
from typing import Any

from shared.attestation import EVIDENCE_LIMITS

from .errors import EvidenceMalformed
from .hexutil import decode_hex
from .model import Evidence

# The text fields' bounds; the quote's is on its hex text, so its bytes get half.
_TEXT_FIELDS: dict[str, int] = {
    name: limit for name, limit in EVIDENCE_LIMITS.items() if name != "quote"
}
MAX_QUOTE_BYTES = EVIDENCE_LIMITS["quote"] // 2
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


def _bounded(field: str, value: str | bytes | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise EvidenceMalformed(field, f"too large ({len(value)} bytes, at most {limit})")


def validate_evidence(evidence: Evidence) -> None:
    """Size bounds on every input (cheap; run on every request)."""
    if not evidence.quote:
        raise EvidenceMalformed("quote", "missing")
    _bounded("quote", evidence.quote, MAX_QUOTE_BYTES)
    for name, limit in _TEXT_FIELDS.items():
        _bounded(name, getattr(evidence, name), limit)


def _text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if name in ("event_log", "vm_config", "collateral", "acme_info") and isinstance(
        value, (list, dict)
    ):
        # Some APIs deliver these as JSON values rather than JSON text.
        return json.dumps(value, separators=(",", ":"))
    if not isinstance(value, str):
        raise EvidenceMalformed(name, "expected a string")
    return value


def evidence_from_dict(doc: Any) -> Evidence:
    """Build Evidence from `{quote, event_log, vm_config, report_data, ...}`."""
    if not isinstance(doc, dict):
        raise EvidenceMalformed("evidence", "expected a JSON object")
    quote_value = doc.get("quote")
    if not isinstance(quote_value, str) or not quote_value:
        raise EvidenceMalformed("quote", "missing (expected a hex string)")
    # Hex text, with an optional 0x.
    _bounded("quote", quote_value, EVIDENCE_LIMITS["quote"] + 2)
    evidence = Evidence(
        quote=decode_hex(quote_value, "quote"),
        event_log=_text(doc, "event_log"),
        vm_config=_text(doc, "vm_config"),
        report_data=_text(doc, "report_data"),
        app_compose=_text(doc, "app_compose"),
        certificate_chain=_text(doc, "certificate_chain"),
        collateral=_text(doc, "collateral"),
        acme_account_uri=_text(doc, "acme_account_uri"),
        acme_info=_text(doc, "acme_info"),
    )
    if evidence.report_data:
        decode_hex(evidence.report_data, "report_data")
    validate_evidence(evidence)
    return evidence


def parse_evidence_json(text: str | bytes) -> Evidence:
    _bounded("evidence", text, MAX_DOCUMENT_BYTES)
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvidenceMalformed("evidence", f"not valid JSON ({exc})") from None
    return evidence_from_dict(doc)
