"""Malformed input gets a clear error naming the field, never a crash."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.verification.engine import VerificationEngine
from services.verification.errors import EvidenceMalformed
from services.verification.eventlog import parse_event_log
from services.verification.evidence import MAX_QUOTE_BYTES, evidence_from_dict, parse_evidence_json
from services.verification.hexutil import decode_hex
from services.verification.model import VerificationFlags
from services.verification.quote import parse_quote

from .support import DCAP, DSTACK, quote_report_evidence, quote_report_request


@pytest.mark.parametrize("length", [0, 20, 48, 300, 632, 700, 4000])
def test_truncated_quote_is_evidence_malformed(length: int) -> None:
    raw = (DCAP / "tdx_quote.bin").read_bytes()[:length]
    with pytest.raises(EvidenceMalformed) as info:
        parse_quote(raw)
    assert info.value.field == "quote"
    assert "truncated" in info.value.message


def test_engine_rejects_truncated_quote(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), quote=quote_report_evidence().quote[:1000])
    with pytest.raises(EvidenceMalformed, match="quote: truncated"):
        engine.verify(quote_report_request(evidence=evidence))


def test_unsupported_quote_version_is_named() -> None:
    raw = bytearray((DCAP / "tdx_quote.bin").read_bytes())
    raw[0] = 9
    with pytest.raises(EvidenceMalformed, match="unsupported quote version 9"):
        parse_quote(bytes(raw))


def test_event_log_that_is_not_json(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), event_log="[{not json")
    with pytest.raises(EvidenceMalformed) as info:
        engine.verify(quote_report_request(evidence=evidence))
    assert info.value.field == "event_log"
    assert "not valid JSON" in info.value.message


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ('{"imr": 0}', "event_log", "expected a JSON array"),
        ('[{"imr": 7, "event_type": 1, "digest": ""}]', "event_log[0].imr", "integer 0..3"),
        ('[{"imr": 3, "event_type": 1, "digest": "abc"}]', "event_log[0].digest", "odd length"),
        ('[{"imr": 3, "event_type": 1, "digest": "ab"}]', "event_log[0].digest", "expected 48"),
    ],
)
def test_event_log_entries_are_checked(text: str, field: str, message: str) -> None:
    with pytest.raises(EvidenceMalformed) as info:
        parse_event_log(text)
    assert info.value.field == field
    assert message in info.value.message


def test_odd_length_hex_quote() -> None:
    doc = json.loads((DSTACK / "quote-report.json").read_text())
    doc["quote"] = doc["quote"][:-1]
    with pytest.raises(EvidenceMalformed) as info:
        evidence_from_dict(doc)
    assert info.value.field == "quote"
    assert "odd length" in info.value.message


def test_non_hex_characters_are_named() -> None:
    with pytest.raises(EvidenceMalformed, match="unexpected character 'z'"):
        decode_hex("00zz", "report_data")


def test_odd_length_expected_compose_hash(engine: VerificationEngine) -> None:
    with pytest.raises(EvidenceMalformed) as info:
        engine.verify(quote_report_request(expected_compose_hash="abc"))
    assert info.value.field == "expected_compose_hash"


def test_oversized_quote_is_refused_naming_the_field() -> None:
    with pytest.raises(EvidenceMalformed) as info:
        evidence_from_dict({"quote": "00" * (MAX_QUOTE_BYTES + 1)})
    assert info.value.field == "quote"
    assert "too large" in info.value.message


def test_oversized_compose_text_is_refused(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), app_compose="x" * (2 * 1024 * 1024))
    with pytest.raises(EvidenceMalformed) as info:
        engine.verify(quote_report_request(evidence=evidence))
    assert info.value.field == "app_compose"


@pytest.mark.parametrize(
    ("text", "field"),
    [("not json", "evidence"), ("[]", "evidence"), ("{}", "quote"), ('{"quote": 5}', "quote")],
)
def test_evidence_document_shape(text: str, field: str) -> None:
    with pytest.raises(EvidenceMalformed) as info:
        parse_evidence_json(text)
    assert info.value.field == field


def test_malformed_collateral_is_named(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), collateral='{"tcb_info": 1}')
    with pytest.raises(EvidenceMalformed) as info:
        engine.verify(quote_report_request(evidence=evidence))
    assert info.value.field == "collateral"


def test_evidence_accepts_event_log_as_json_value() -> None:
    doc = json.loads((DSTACK / "quote-report.json").read_text())
    doc["event_log"] = json.loads(doc["event_log"])
    evidence = evidence_from_dict(doc)
    assert evidence.event_log is not None
    assert len(parse_event_log(evidence.event_log)) == 28


@pytest.mark.parametrize(
    "flags", [["os"], ["source_code"], ["os", "source_code", "tee_controlled_key"]]
)
def test_os_or_source_code_without_hardware_is_refused(
    engine: VerificationEngine, flags: list[str]
) -> None:
    with pytest.raises(EvidenceMalformed) as caught:
        engine.verify(quote_report_request(flags=VerificationFlags.only(flags)))
    assert caught.value.field == "flags" and "need hardware" in caught.value.message
