"""Tampered evidence is rejected by the right check with the right reason."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.verification.checks.source_code import check_source_code
from services.verification.engine import VerificationEngine
from services.verification.eventlog import runtime_event_digest
from services.verification.model import CheckStatus

from .support import (
    APP_ID,
    AT_90C06F,
    COMPOSE_HASH,
    OFFSET_HEADER,
    OFFSET_QE_REPORT,
    OFFSET_SIGNATURE,
    OFFSET_TD_REPORT,
    event_log_with,
    fake_context,
    flip,
    quote_report_evidence,
    quote_report_request,
)


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (OFFSET_HEADER, "ISV enclave report signature is invalid"),
        (OFFSET_TD_REPORT, "ISV enclave report signature is invalid"),
        (OFFSET_SIGNATURE, "ISV enclave report signature is invalid"),
        (OFFSET_QE_REPORT, "Signature is invalid for qe_report"),
    ],
    ids=["header", "td_report", "quote_signature", "qe_report"],
)
def test_byte_flipped_in_signed_region_fails_hardware(
    engine: VerificationEngine, offset: int, reason: str
) -> None:
    evidence = quote_report_evidence()
    request = quote_report_request(evidence=replace(evidence, quote=flip(evidence.quote, offset)))
    report = engine.verify(request)
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert reason in hardware.reason
    # Nothing downstream trusts the tampered quote's registers.
    assert "quote fields are not verified" in report.check("os").reason
    assert "quote fields are not verified" in report.check("source_code").reason
    assert not report.passed


def test_event_payload_changed_with_digest_kept_fails_source_code(
    engine: VerificationEngine,
) -> None:
    forged = event_log_with({"event_payload": "00" * 32}, "compose-hash")
    evidence = replace(quote_report_evidence(), event_log=forged)
    report = engine.verify(quote_report_request(evidence=evidence, expected_compose_hash="00" * 32))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert "event digest does not match its payload: #22 'compose-hash'" in source.reason
    assert report.check("hardware").status is CheckStatus.PASSED


def test_forged_event_with_recomputed_digest_fails_rtmr3_replay(
    engine: VerificationEngine,
) -> None:
    payload = bytes(32)
    digest = runtime_event_digest("compose-hash", payload).hex()
    forged = event_log_with({"event_payload": payload.hex(), "digest": digest}, "compose-hash")
    evidence = replace(quote_report_evidence(), event_log=forged)
    report = engine.verify(quote_report_request(evidence=evidence, expected_compose_hash="00" * 32))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert source.reason.startswith("RTMR3 replayed from the event log")


def test_wrong_compose_text_fails_source_code(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), app_compose='{"name":"not-the-app"}')
    report = engine.verify(quote_report_request(evidence=evidence))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert "differs from sha256 of the app-compose text" in source.reason


def test_wrong_expected_compose_hash_fails_source_code(engine: VerificationEngine) -> None:
    report = engine.verify(quote_report_request(expected_compose_hash="ab" * 32))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert "differs from the expected compose hash given with the task" in source.reason


def test_missing_compose_text_and_hash_fails_saying_what_is_missing(
    engine: VerificationEngine,
) -> None:
    report = engine.verify(quote_report_request(expected_compose_hash=""))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert "neither the app-compose text nor an expected compose hash" in source.reason


def test_missing_event_log_fails_source_code(engine: VerificationEngine) -> None:
    evidence = replace(quote_report_evidence(), event_log=None)
    report = engine.verify(quote_report_request(evidence=evidence))
    assert report.check("source_code").reason == "no event log in the evidence: nothing to replay"


def test_other_app_id_fails_source_code(engine: VerificationEngine) -> None:
    report = engine.verify(quote_report_request(app_id="00" * 20))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert f"app-id event ({APP_ID}) differs from the expected app id" in source.reason


@pytest.mark.parametrize(
    "at",
    [datetime(2026, 3, 25, tzinfo=UTC), datetime(2026, 2, 18, 10, 0, tzinfo=UTC)],
    ids=["after_window", "before_window"],
)
def test_collateral_outside_its_window_fails_hardware(
    engine: VerificationEngine, at: datetime
) -> None:
    report = engine.verify(quote_report_request(evaluated_at=at))
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "2026-02-18T10:58:51Z .. 2026-03-20T10:41:15Z" in hardware.reason
    assert "does not contain the evaluation time" in hardware.reason


def test_mr_config_id_with_other_compose_hash_fails_source_code() -> None:
    ctx = fake_context(
        mr_config_id=b"\x01" + bytes(32) + bytes(15), expected_compose_hash=COMPOSE_HASH
    )
    outcome = check_source_code(ctx, None)
    assert outcome.status is CheckStatus.FAILED
    assert "mr_config_id carries compose hash" in outcome.reason


def test_mr_config_id_with_the_compose_hash_passes() -> None:
    ctx = fake_context(
        mr_config_id=b"\x01" + bytes.fromhex(COMPOSE_HASH) + bytes(15),
        expected_compose_hash=COMPOSE_HASH,
    )
    outcome = check_source_code(ctx, None)
    assert outcome.status is CheckStatus.PASSED
    assert outcome.details["mr_config_id"] == "carries the compose hash"


class _Registry:
    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bytes]] = []

    def is_allowed(self, contract_address: str, compose_hash: bytes, at: datetime) -> bool:
        assert at == AT_90C06F  # the lookup is made as of the evaluation time
        self.calls.append((contract_address, compose_hash))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


CONTRACT = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (True, CheckStatus.PASSED, "compose hash matches"),
        (False, CheckStatus.FAILED, "does not allow compose hash"),
        (RuntimeError("rpc down"), CheckStatus.ERROR, "on-chain compose hash lookup failed"),
    ],
    ids=["allowed", "not_allowed", "rpc_error"],
)
def test_on_chain_compose_hash(answer: bool | Exception, status: CheckStatus, reason: str) -> None:
    registry = _Registry(answer)
    ctx = fake_context(expected_compose_hash=COMPOSE_HASH, contract_address=CONTRACT)
    outcome = check_source_code(ctx, registry)
    assert outcome.status is status
    assert reason in outcome.reason
    assert registry.calls == [(CONTRACT, bytes.fromhex(COMPOSE_HASH))]


def test_contract_address_without_chain_rpc_is_an_error_not_a_pass() -> None:
    ctx = fake_context(expected_compose_hash=COMPOSE_HASH, contract_address=CONTRACT)
    outcome = check_source_code(ctx, None)
    assert outcome.status is CheckStatus.ERROR
    assert "no chain RPC is configured" in outcome.reason and CONTRACT in outcome.reason
    assert outcome.details["on_chain"] == "not checked (no Ethereum RPC URL configured)"


def test_event_log_json_is_preserved_by_fake_context() -> None:
    # Guard for the helpers above: the fake context replays to real registers.
    ctx = fake_context()
    assert ctx.events is not None and len(ctx.events) == len(
        json.loads(quote_report_evidence().event_log or "[]")
    )
