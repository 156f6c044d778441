"""dstack's event-log rules (cc-eventlog, dstack-attest), on the public vector.

Engine-level tests use the real quote-report.json vector and its real quote:
any change to its event log must either be caught by a rule or break the
replay. Function-level tests build a context whose "verified" registers are
the replay of a changed log (fake_context's approach), for the rules a real
quote cannot exercise (events after system-ready, a second identity event,
mr_config_id forms the vector does not carry).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from Crypto.Hash import keccak

from services.verification.checks.context import AttestedQuote, CheckContext
from services.verification.checks.hardware import check_hardware
from services.verification.checks.source_code import check_source_code, mr_config_id_v2
from services.verification.engine import VerificationEngine
from services.verification.errors import EvidenceMalformed
from services.verification.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    forged_runtime_events,
    parse_event_log,
    replay,
    runtime_event_digest,
    runtime_event_preimage,
    runtime_events,
)
from services.verification.model import CheckStatus

from .support import (
    APP_ID,
    COMPOSE_HASH,
    fake_context,
    quote_report_evidence,
    quote_report_request,
)

VECTOR_EVENTS: list[dict[str, Any]] = json.loads(quote_report_evidence().event_log or "[]")


def _position(name: str) -> int:
    return next(i for i, e in enumerate(VECTOR_EVENTS) if e["event"] == name)


def _relabelled(name: str, event_type: int = 1) -> str:
    events = [dict(e) for e in VECTOR_EVENTS]
    events[_position(name)]["event_type"] = event_type  # digest kept
    return json.dumps(events)


@pytest.mark.parametrize("name", ["instance-id", "key-provider", "system-ready", "app-id"])
def test_relabelled_rtmr3_event_fails_source_code_naming_it(
    engine: VerificationEngine, name: str
) -> None:
    # Relabelled: its type is no longer the runtime type, its digest is kept, so
    # a replay of supplied digests still matched and the event vanished from
    # the identity lookups. The task names no app id (the app-id case passed).
    evidence = replace(quote_report_evidence(), event_log=_relabelled(name))
    report = engine.verify(quote_report_request(evidence=evidence))
    source = report.check("source_code")
    assert source.status is CheckStatus.FAILED
    assert f"RTMR3 event #{_position(name)} '{name}' has type 0x1, not a runtime event" in (
        source.reason
    )
    assert report.verdict == "failed"


def test_runtime_typed_event_in_rtmr0_fails_source_code(engine: VerificationEngine) -> None:
    events = [dict(e) for e in VECTOR_EVENTS]
    assert events[0]["imr"] == 0
    events[0]["event_type"] = DSTACK_RUNTIME_EVENT_TYPE
    evidence = replace(quote_report_evidence(), event_log=json.dumps(events))
    source = engine.verify(quote_report_request(evidence=evidence)).check("source_code")
    assert source.status is CheckStatus.FAILED
    assert "runtime event #0 sits in RTMR0, not RTMR3" in source.reason


def test_runtime_events_are_those_of_the_runtime_type_wherever_they_sit() -> None:
    events = [dict(e) for e in VECTOR_EVENTS]
    events[0]["event_type"] = DSTACK_RUNTIME_EVENT_TYPE
    parsed = parse_event_log(json.dumps(events))
    found = runtime_events(parsed)
    assert found[0].position == 0 and found[0].imr == 0
    assert [e.name for e in found[1:]] == [e["event"] for e in VECTOR_EVENTS if e["imr"] == 3]


def test_replay_recomputes_runtime_digests_and_skips_non_runtime_rtmr3_events() -> None:
    events = parse_event_log(quote_report_evidence().event_log or "[]")
    forged_digest = [e._replace(digest=bytes(48)) if e.imr == 3 else e for e in events]
    assert replay(forged_digest) == replay(events)  # RTMR3 from name and payload, not digest
    relabelled = parse_event_log(_relabelled("system-ready"))
    assert replay(relabelled)[3] != replay(events)[3]  # no longer replayed at all


def test_the_vector_passes_and_reports_key_provider_instance_id_and_app_events(
    engine: VerificationEngine,
) -> None:
    source = engine.verify(quote_report_request(app_id=APP_ID)).check("source_code")
    assert source.status is CheckStatus.PASSED, source.reason
    key_provider = json.loads(
        bytes.fromhex(VECTOR_EVENTS[_position("key-provider")]["event_payload"])
    )
    assert source.details["key_provider"] == key_provider
    assert source.details["instance_id"] == VECTOR_EVENTS[_position("instance-id")]["event_payload"]
    # LIUM_MINER_HOTKEY follows system-ready: the application's own, reported only.
    assert source.details["app_events"] == [
        f"#{_position('LIUM_MINER_HOTKEY')} 'LIUM_MINER_HOTKEY'"
    ]


# ---- function level: a context whose registers are the replay of a changed log


def _runtime(name: str, payload: bytes) -> dict[str, Any]:
    return {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT_TYPE,
        "digest": runtime_event_digest(name, payload).hex(),
        "event": name,
        "event_payload": payload.hex(),
    }


def _context(
    events: list[dict[str, Any]], mr_config_id: bytes = bytes(48), **request: Any
) -> CheckContext:
    base = fake_context(mr_config_id=mr_config_id, **request)
    parsed = parse_event_log(json.dumps(events))
    fields = dict(base.attested.fields) if base.attested else {}
    fields.update({f"rt_mr{i}": r.hex() for i, r in enumerate(replay(parsed))})
    return replace(base, events=parsed, attested=AttestedQuote("UpToDate", (), "TD10", fields))


def _insert(at: int, *new: dict[str, Any]) -> list[dict[str, Any]]:
    events = [dict(e) for e in VECTOR_EVENTS]
    return events[:at] + list(new) + events[at:]


def test_identity_events_after_system_ready_are_not_identity() -> None:
    after = _position("system-ready") + 1
    events = _insert(after, _runtime("app-id", bytes(20)), _runtime("compose-hash", bytes(32)))
    outcome = check_source_code(
        _context(events, expected_compose_hash=COMPOSE_HASH, app_id=APP_ID), None
    )
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["compose_hash"] == COMPOSE_HASH
    assert f"#{after} 'app-id'" in outcome.details["app_events"]


def test_a_second_identity_event_before_system_ready_fails() -> None:
    events = _insert(_position("system-ready"), _runtime("instance-id", b"\x01" * 20))
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.FAILED
    assert (
        "a second 'instance-id' event" in outcome.reason and "before system-ready" in outcome.reason
    )


def test_compose_hash_after_system_ready_only_is_missing() -> None:
    events = [dict(e) for e in VECTOR_EVENTS]
    compose = events.pop(_position("compose-hash"))
    events.insert(_position("system-ready"), compose)  # now just after system-ready
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.FAILED
    assert "no 'compose-hash' event before system-ready" in outcome.reason


def test_os_image_hash_is_reported() -> None:
    image = bytes(range(32))
    events = _insert(_position("system-ready"), _runtime("os-image-hash", image))
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["os_image_hash"] == image.hex()


def test_keccak256_is_ethereums() -> None:
    selector = keccak.new(digest_bits=256, data=b"allowedComposeHashes(bytes32)").hexdigest()
    assert selector[:8] == "2f6622e5"


def _vector_key_provider() -> tuple[int, bytes]:
    info = json.loads(bytes.fromhex(VECTOR_EVENTS[_position("key-provider")]["event_payload"]))
    assert info["name"] == "local-sgx"
    return 1, bytes.fromhex(info["id"])


def test_mr_config_id_v2_of_the_event_log_passes() -> None:
    kind, provider_id = _vector_key_provider()
    config_id = mr_config_id_v2(
        bytes.fromhex(COMPOSE_HASH), bytes.fromhex(APP_ID), kind, provider_id
    )
    assert config_id[0] == 2 and len(config_id) == 48
    outcome = check_source_code(
        fake_context(mr_config_id=config_id, expected_compose_hash=COMPOSE_HASH), None
    )
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert (
        outcome.details["mr_config_id"] == "carries the compose hash, app id and key provider (v2)"
    )


def test_mr_config_id_v2_of_another_compose_hash_fails() -> None:
    kind, provider_id = _vector_key_provider()
    config_id = mr_config_id_v2(bytes(32), bytes.fromhex(APP_ID), kind, provider_id)
    outcome = check_source_code(
        fake_context(mr_config_id=config_id, expected_compose_hash=COMPOSE_HASH), None
    )
    assert outcome.status is CheckStatus.FAILED
    assert "(v2) differs from the one the event log implies" in outcome.reason


def test_mr_config_id_of_an_unknown_version_fails() -> None:
    outcome = check_source_code(
        fake_context(mr_config_id=b"\x07" + bytes(47), expected_compose_hash=COMPOSE_HASH), None
    )
    assert outcome.status is CheckStatus.FAILED
    assert "mr_config_id has version 7" in outcome.reason


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("td_attributes", "0100001000000000", "DEBUG mode"),
        ("mr_signer_seam", "01" + "00" * 47, "mr_signer_seam is not zero"),
    ],
)
def test_debug_td_fails_hardware_whatever_the_tcb_status(
    field: str, value: str, reason: str
) -> None:
    ctx = fake_context()
    assert ctx.attested is not None and ctx.attested.tcb_status == "UpToDate"
    fields = dict(ctx.attested.fields) | {field: value}
    ctx = replace(ctx, attested=replace(ctx.attested, fields=fields))
    outcome = check_hardware(ctx, ("UpToDate",))
    assert outcome.status is CheckStatus.FAILED
    assert reason in outcome.reason


def test_the_vector_td_is_not_debug(engine: VerificationEngine) -> None:
    hardware = engine.verify(quote_report_request()).check("hardware")
    assert hardware.status is CheckStatus.PASSED, hardware.reason


# ---- V2 runtime events (dstack EventLogVersion::V2: JCS digest, published pre-image)


def _v2(name: str, payload: bytes, preimage: str | None = "canonical") -> dict[str, Any]:
    canonical = runtime_event_preimage(name, payload, 2)
    return {
        "imr": 3,
        "event_type": DSTACK_RUNTIME_EVENT_TYPE,
        "digest": hashlib.sha384(canonical).hexdigest(),
        "event": name,
        "event_payload": payload.hex(),
        "version": 2,
        **(
            {"preimage": canonical.hex() if preimage == "canonical" else preimage}
            if preimage
            else {}
        ),
    }


def test_v2_preimage_is_dstacks_canonical_json() -> None:
    # cc-eventlog's own test: name, payload as hex, the runtime type; no version.
    text = runtime_event_preimage("compose-hash", b"\xab\xcd", 2).decode()
    assert text == '{"name":"compose-hash","payload":"abcd","type":134217729}'


def test_a_v2_event_replays_and_counts_as_identity() -> None:
    events = _insert(_position("system-ready"), _v2("os-image-hash", b"\x11" * 32))
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.PASSED, outcome.reason
    assert outcome.details["os_image_hash"] == "11" * 32


@pytest.mark.parametrize(
    "preimage",
    [None, "00", runtime_event_preimage("os-image-hash", b"\x11" * 32, 1).hex()],
    ids=["missing", "other_bytes", "v1_form"],
)
def test_a_v2_event_without_its_canonical_preimage_fails(preimage: str | None) -> None:
    event = _v2("os-image-hash", b"\x11" * 32, preimage=preimage)
    events = _insert(_position("system-ready"), event)
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.FAILED
    assert "event digest does not match its payload" in outcome.reason


def test_a_v2_event_with_a_v1_digest_fails() -> None:
    event = _v2("os-image-hash", b"\x11" * 32)
    event["digest"] = runtime_event_digest("os-image-hash", b"\x11" * 32).hex()
    events = _insert(_position("system-ready"), event)
    outcome = check_source_code(_context(events, expected_compose_hash=COMPOSE_HASH), None)
    assert outcome.status is CheckStatus.FAILED


def test_an_unknown_event_log_version_is_malformed() -> None:
    events = [dict(e) for e in VECTOR_EVENTS]
    events[21]["version"] = 3
    with pytest.raises(EvidenceMalformed) as caught:
        parse_event_log(json.dumps(events))
    assert caught.value.field == "event_log[21].version"


# --- dstack's stripped event logs ("TDX lite", TdxEvent::stripped) --------------------


def _lite_evidence() -> Any:
    from services.verification.evidence import parse_evidence_json

    from .support import DSTACK

    return parse_evidence_json((DSTACK / "tdx-lite-getquote.json").read_text())


def test_a_stripped_log_leaves_out_runtime_digests_and_replays_the_quotes_rtmrs() -> None:
    # The real dstack 0.6 capture: its runtime events carry no digest (dstack
    # recomputes them), and the recomputed replay gives the quote's registers.
    from services.verification.quote import parse_quote

    evidence = _lite_evidence()
    events = parse_event_log(evidence.event_log or "[]")
    stripped = [e for e in events if e.event_type == DSTACK_RUNTIME_EVENT_TYPE and not e.digest]
    assert [e.name for e in stripped][:3] == ["system-preparing", "app-id", "compose-hash"]
    fields = parse_quote(evidence.quote).fields
    assert [r.hex() for r in replay(events)] == [fields[f"rt_mr{i}"] for i in range(4)]
    assert not forged_runtime_events(runtime_events(events))


def test_the_lite_capture_fails_hardware_on_its_certificate_dates_not_as_malformed(
    engine: VerificationEngine,
) -> None:
    # ../shared/vectors says: its PCK certificate is newer than any collateral
    # here, so at 2026-03-05 verification fails with CertNotValidYet.
    from .support import AT_90C06F, collateral_90c06f

    evidence = replace(_lite_evidence(), collateral=collateral_90c06f())
    report = engine.verify(
        quote_report_request(evidence=evidence, evaluated_at=AT_90C06F, expected_compose_hash="")
    )
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "CertNotValidYet" in hardware.reason or "not valid yet" in hardware.reason.lower()


def test_only_a_runtime_event_may_leave_out_its_digest() -> None:
    events = [dict(e) for e in VECTOR_EVENTS]
    boot = next(i for i, e in enumerate(events) if e["event_type"] != DSTACK_RUNTIME_EVENT_TYPE)
    events[boot]["digest"] = ""
    with pytest.raises(EvidenceMalformed) as caught:
        parse_event_log(json.dumps(events))
    assert caught.value.field == f"event_log[{boot}].digest"
    del events[boot]["digest"]
    with pytest.raises(EvidenceMalformed):
        parse_event_log(json.dumps(events))


def test_a_supplied_runtime_digest_still_has_to_match(engine: VerificationEngine) -> None:
    # Leaving digests out is allowed; a wrong one is still a forgery.
    events = [dict(e) for e in VECTOR_EVENTS]
    for e in events:
        if e["event_type"] == DSTACK_RUNTIME_EVENT_TYPE:
            e["digest"] = ""
    evidence = quote_report_evidence(event_log=json.dumps(events))
    assert engine.verify(quote_report_request(evidence=evidence)).passed
    events[_position("app-id")]["digest"] = "00" * 48
    evidence = quote_report_evidence(event_log=json.dumps(events))
    source = engine.verify(quote_report_request(evidence=evidence)).check("source_code")
    assert source.status is CheckStatus.FAILED
