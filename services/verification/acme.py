"""The gateway's acme-info: one quote per key, as dstack's gateway publishes it.

`GET https://gateway.<base_domain>/.dstack/acme-info` answers
`{account_uri, account_quote, quoted_hist_keys: [{public_key, quote}], ...}`
(dstack gateway_rpc.proto AcmeInfoResponse). Each quote is the JSON text of
a guest agent GetQuoteResponse ({quote, event_log, report_data, vm_config});
`public_key` is the certificate key's SubjectPublicKeyInfo DER, hex. The
account quote binds sha512("acme-account:" || account_uri), each key's quote
sha512("zt-cert:" || SPKI DER).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import EvidenceMalformed
from .evidence import evidence_from_dict
from .model import Evidence

MAX_QUOTED_KEYS = 256
ACME_ACCOUNT_TAG = "acme-account"
ZT_CERT_TAG = "zt-cert"


@dataclass(frozen=True)
class QuotedKey:
    public_key: bytes  # SPKI DER
    quote: Evidence | None  # None: the gateway published no (readable) quote
    problem: str = ""


@dataclass(frozen=True)
class AcmeInfo:
    account_uri: str
    account_quote: Evidence | None
    account_problem: str
    quoted_hist_keys: tuple[QuotedKey, ...]


def _quote(value: Any, field: str) -> tuple[Evidence | None, str]:
    """A GetQuoteResponse given as JSON text (or as an object); (None, why) if absent."""
    if value in (None, ""):
        return None, "no quote published"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, f"{field} is not GetQuoteResponse JSON"
    try:
        return evidence_from_dict(value), ""
    except EvidenceMalformed as exc:
        return None, f"{field}: {exc}"


def _hex_key(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise EvidenceMalformed(field, "expected the key's SPKI DER as hex")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise EvidenceMalformed(field, "expected the key's SPKI DER as hex") from None


def parse_acme_info(text: str) -> AcmeInfo:
    """Raises EvidenceMalformed naming the field; an unreadable quote is kept
    as a problem of that key (the checks say which key could not be bound)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvidenceMalformed("acme_info", f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise EvidenceMalformed("acme_info", "expected a JSON object")
    uri = doc.get("account_uri", "")
    if not isinstance(uri, str):
        raise EvidenceMalformed("acme_info.account_uri", "expected a string")
    account_quote, account_problem = _quote(doc.get("account_quote"), "acme_info.account_quote")
    raw_keys = doc.get("quoted_hist_keys", [])
    if not isinstance(raw_keys, list):
        raise EvidenceMalformed("acme_info.quoted_hist_keys", "expected an array")
    if len(raw_keys) > MAX_QUOTED_KEYS:
        raise EvidenceMalformed("acme_info.quoted_hist_keys", f"more than {MAX_QUOTED_KEYS}")
    keys = []
    for i, item in enumerate(raw_keys):
        field = f"acme_info.quoted_hist_keys[{i}]"
        if not isinstance(item, dict):
            raise EvidenceMalformed(field, "expected an object")
        quote, problem = _quote(item.get("quote"), f"{field}.quote")
        keys.append(
            QuotedKey(_hex_key(item.get("public_key"), f"{field}.public_key"), quote, problem)
        )
    return AcmeInfo(uri, account_quote, account_problem, tuple(keys))
