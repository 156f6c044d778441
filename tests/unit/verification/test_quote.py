"""The structural quote parser agrees with dcap-qvl's verified report on every vector."""

from __future__ import annotations

import json
from datetime import datetime

import dcap_qvl
import pytest

from services.verification.errors import EvidenceMalformed
from services.verification.hexutil import decode_hex
from services.verification.quote import parse_quote

from .support import AT_90C06F, AT_SGX, AT_TDX, DCAP, DSTACK


def _vector_quote_report() -> bytes:
    return bytes.fromhex(json.loads((DSTACK / "quote-report.json").read_text())["quote"])


@pytest.mark.parametrize(
    ("quote", "collateral", "at", "body_key"),
    [
        ((DCAP / "tdx_quote.bin").read_bytes(), "tdx_quote.collateral.json", AT_TDX, "TD10"),
        (_vector_quote_report(), "collateral_fmspc_90C06F.json", AT_90C06F, "TD10"),
        ((DCAP / "sgx_quote.bin").read_bytes(), "sgx_quote.collateral.json", AT_SGX, "SgxEnclave"),
    ],
    ids=["tdx_v4", "dstack", "sgx"],
)
def test_parsed_fields_equal_dcap_qvl_verified_report(
    quote: bytes, collateral: str, at: datetime, body_key: str
) -> None:
    verified = dcap_qvl.verify(
        quote,
        dcap_qvl.QuoteCollateralV3.from_json((DCAP / collateral).read_text()),
        int(at.timestamp()),
    )
    report = json.loads(verified.to_json())["report"][body_key]
    parsed = parse_quote(quote).fields
    hex_fields = {k: v for k, v in report.items() if isinstance(v, str) and k in parsed}
    assert len(hex_fields) >= 5
    assert {k: parsed[k] for k in hex_fields} == hex_fields


def test_v5_quote_body_is_td15() -> None:
    parsed = parse_quote((DCAP / "tdx_quote_v5.bin").read_bytes())
    assert (parsed.version, parsed.body_type) == (5, "TD15")
    assert "mr_service_td" in parsed.fields
    dcap = dcap_qvl.parse_quote((DCAP / "tdx_quote_v5.bin").read_bytes())
    assert parsed.fields["mr_td"] == dcap.report.mr_td.hex()
    assert parsed.fields["rt_mr3"] == dcap.report.rt_mr3.hex()


def test_decode_hex_accepts_prefix_and_surrounding_space_only() -> None:
    assert decode_hex("0xABcd", "f") == b"\xab\xcd"
    assert decode_hex(" abcd\n", "f") == b"\xab\xcd"
    with pytest.raises(EvidenceMalformed, match="odd length"):
        decode_hex("ab cd", "f")
