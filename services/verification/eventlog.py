"""dstack event log: parsing, runtime-event digests, RTMR replay, identity events.

The rules are dstack's own (Dstack-TEE/dstack cc-eventlog tdx.rs and
runtime_events.rs, dstack-attest attestation.rs):
- a runtime event is one whose event_type is 0x08000001, wherever it sits; its
  digest is sha384(le32(0x08000001) || ":" || name || ":" || payload), always
  recomputed (a supplied digest proves nothing about the payload; dstack's
  stripped logs leave it out, and one supplied must match);
- RTMR3 holds runtime events only, and runtime events live in RTMR3 only;
- identity events are read before `system-ready` only (find_event stops
  there); what follows is the application's own and never identity.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import NamedTuple

import orjson

from .errors import EvidenceMalformed
from .hexutil import decode_hex

DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
RTMR_COUNT = 4
DIGEST_LEN = 48
MAX_EVENTS = 4096


class Event(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a log has dozens of events and
    # frozen-dataclass construction showed up in the per-verification profile.
    position: int  # in the log, counted from 0
    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes
    # dstack EventLogVersion of a runtime event: 1 (binary digest) or 2 (JCS digest).
    version: int = 1
    # V2: the hex pre-image dstack publishes beside the digest.
    preimage: str | None = None


_RUNTIME_TYPE_LE32 = struct.pack("<I", DSTACK_RUNTIME_EVENT_TYPE)


RUNTIME_IMR = 3
SYSTEM_READY = "system-ready"
# The events dstack reads as the instance's identity (dstack-attest decode_app_info).
IDENTITY_EVENTS = (
    "app-id",
    "compose-hash",
    "instance-id",
    "key-provider",
    "os-image-hash",
    "mr-kms",
)


def runtime_events(events: list[Event]) -> list[Event]:
    """The dstack runtime events (type 0x08000001, in any register), in log order."""
    return [e for e in events if e.event_type == DSTACK_RUNTIME_EVENT_TYPE]


def runtime_event_preimage(name: str, payload: bytes, version: int = 1) -> bytes:
    """The bytes dstack hashes for a runtime event (cc-eventlog RuntimeEvent::preimage):
    V1 le32(type) || ":" || name || ":" || payload; V2 the JCS (RFC 8785) text of
    {"name", "payload" (hex), "type"}, whose keys sort in that order."""
    if version == 2:
        doc = {"name": name, "payload": payload.hex(), "type": DSTACK_RUNTIME_EVENT_TYPE}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    return b"".join((_RUNTIME_TYPE_LE32, b":", name.encode("utf-8"), b":", payload))


def runtime_event_digest(name: str, payload: bytes, version: int = 1) -> bytes:
    """The digest dstack extends RTMR3 with for a runtime event."""
    return hashlib.sha384(runtime_event_preimage(name, payload, version)).digest()


def describe(event: Event) -> str:
    return f"#{event.position} '{event.name}'" if event.name else f"#{event.position}"


def misplaced_events(events: list[Event]) -> list[str]:
    """Why each event breaks the register rule: RTMR3 holds runtime events only,
    and a runtime event belongs in RTMR3 only. A relabelled event (its type
    changed, its digest kept) shows up here instead of slipping out of the
    identity lookups while still replaying."""
    problems: list[str] = []
    for e in events:
        runtime = e.event_type == DSTACK_RUNTIME_EVENT_TYPE
        if e.imr == RUNTIME_IMR and not runtime:
            problems.append(
                f"RTMR3 event {describe(e)} has type 0x{e.event_type:x}, not a runtime event "
                f"(0x{DSTACK_RUNTIME_EVENT_TYPE:08x})"
            )
        elif runtime and e.imr != RUNTIME_IMR:
            problems.append(f"runtime event {describe(e)} sits in RTMR{e.imr}, not RTMR3")
    return problems


class RuntimeIdentity(NamedTuple):
    """The identity events read before system-ready, and what follows it."""

    identity: dict[str, Event]  # name -> the one event of that name before system-ready
    app_events: list[Event]  # after system-ready: the application's own, never identity
    system_ready: bool  # whether the log has a system-ready event
    duplicates: list[str]  # identity events seen twice before system-ready


def read_identity(runtime: list[Event]) -> RuntimeIdentity:
    identity: dict[str, Event] = {}
    duplicates: list[str] = []
    for i, e in enumerate(runtime):
        if e.name == SYSTEM_READY:
            return RuntimeIdentity(identity, runtime[i + 1 :], True, duplicates)
        if e.name in IDENTITY_EVENTS:
            if e.name in identity:
                duplicates.append(
                    f"a second '{e.name}' event {describe(e)} before system-ready "
                    f"(the first is #{identity[e.name].position})"
                )
            else:
                identity[e.name] = e
    return RuntimeIdentity(identity, [], False, duplicates)


def _explain(i: int, item: object) -> EvidenceMalformed:
    """The precise complaint about event `i` (the slow path of parse_event_log)."""
    where = f"event_log[{i}]"
    if not isinstance(item, dict):
        return EvidenceMalformed(where, "expected an object")
    imr, event_type = item.get("imr"), item.get("event_type")
    if type(imr) is not int or not 0 <= imr < RTMR_COUNT:
        return EvidenceMalformed(f"{where}.imr", "expected an integer 0..3")
    if type(event_type) is not int or not 0 <= event_type <= 0xFFFFFFFF:
        return EvidenceMalformed(f"{where}.event_type", "expected an integer in the u32 range")
    name, payload = item.get("event", ""), item.get("event_payload", "")
    digest = item.get("digest", "")
    if not isinstance(name, str) or not isinstance(payload, str):
        return EvidenceMalformed(where, "event and event_payload must be strings")
    if not isinstance(digest, str):
        return EvidenceMalformed(f"{where}.digest", "expected a hex string")
    if not digest and event_type != DSTACK_RUNTIME_EVENT_TYPE:
        return EvidenceMalformed(
            f"{where}.digest", "is required (only a runtime event's digest may be left out)"
        )
    try:
        if digest:
            decode_hex(digest, f"{where}.digest", expected_len=DIGEST_LEN)
        decode_hex(payload, f"{where}.event_payload")
    except EvidenceMalformed as exc:
        return exc
    # decode_hex tolerates a 0x prefix and surrounding blanks; the log may not.
    return EvidenceMalformed(where, "digest and event_payload must be plain hex (no 0x, no blanks)")


def parse_event_log(text: str) -> list[Event]:
    """Parse the JSON event log or raise EvidenceMalformed naming the bad field.

    The loop is the hot path of a verification after dcap-qvl itself, hence the
    inline checks; any doubt goes to _explain for a precise message.
    """
    try:
        # orjson: a third of json's time on a typical log, and it rejects what
        # JSON does not allow (NaN, lone surrogates) where json lets it through.
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise EvidenceMalformed("event_log", f"not valid JSON ({exc})") from None
    if not isinstance(raw, list):
        raise EvidenceMalformed("event_log", "expected a JSON array of events")
    if len(raw) > MAX_EVENTS:
        raise EvidenceMalformed("event_log", f"more than {MAX_EVENTS} events")
    events: list[Event] = []
    append = events.append
    # tuple.__new__ builds the NamedTuple without its Python-level __new__:
    # half the cost, on dozens of events per verification.
    make = tuple.__new__
    for i, item in enumerate(raw):
        try:
            imr = item["imr"]
            event_type = item["event_type"]
            # dstack's stripped logs (TdxEvent::stripped, "TDX lite") leave
            # out runtime events' digests: they are recomputed from name and
            # payload anyway. Every other event's digest is what replays.
            digest_hex = item.get("digest", "")
            name = item.get("event", "")
            payload_hex = item.get("event_payload", "")
            digest = bytes.fromhex(digest_hex)
            payload = bytes.fromhex(payload_hex)
            version = item.get("version", 1)
            preimage = item.get("preimage")
        except (TypeError, KeyError, ValueError, AttributeError):
            raise _explain(i, item) from None
        if version not in (1, 2) or type(version) is not int:
            raise EvidenceMalformed(
                f"event_log[{i}].version", "expected 1 or 2 (dstack EventLogVersion)"
            )
        if preimage is not None and type(preimage) is not str:
            raise EvidenceMalformed(f"event_log[{i}].preimage", "expected a hex string")
        if (
            type(imr) is not int
            or not 0 <= imr < RTMR_COUNT
            or type(event_type) is not int
            or not 0 <= event_type <= 0xFFFFFFFF
            or type(name) is not str
            or len(digest_hex) != 2 * len(digest)
            or (len(digest) != DIGEST_LEN and (digest or event_type != DSTACK_RUNTIME_EVENT_TYPE))
            or len(payload_hex) != 2 * len(payload)
        ):
            raise _explain(i, item)
        append(make(Event, (i, imr, event_type, digest, name, payload, version, preimage)))
    return events


Recomputed = dict[int, bytes]  # a runtime event's position -> its recomputed digest


def recompute(runtime: list[Event]) -> Recomputed:
    """Each runtime event's digest from its name and payload, computed once for
    every rule of a verification that needs it."""
    return {e.position: runtime_event_digest(e.name, e.payload, e.version) for e in runtime}


def replay(events: list[Event], recomputed: Recomputed | None = None) -> list[bytes]:
    """RTMR values after extending each register with its events' digests.

    RTMR3 is replayed from runtime events only, each with its digest
    recomputed from name and payload; RTMR0-2 from the firmware's supplied
    digests (their preimages are not in the log). Callers reject logs that
    break the register rule (misplaced_events) before trusting this.
    """
    if recomputed is None:
        recomputed = recompute(runtime_events(events))
    registers = [bytes(DIGEST_LEN)] * RTMR_COUNT
    sha384 = hashlib.sha384
    for event in events:
        imr = event.imr
        if imr == RUNTIME_IMR:
            if event.event_type != DSTACK_RUNTIME_EVENT_TYPE:
                continue
            digest = recomputed[event.position]
        else:
            digest = event.digest
        registers[imr] = sha384(registers[imr] + digest).digest()
    return registers


class LogCheck(NamedTuple):
    """One pass of the event-log rules over a log, shared by the checks of one
    verification (source_code, os, the key checks read the same answers)."""

    misplaced: list[str]
    runtime: list[Event]
    forged: list[Event]
    registers: list[bytes]


def check_log(events: list[Event]) -> LogCheck:
    runtime = runtime_events(events)
    recomputed = recompute(runtime)
    return LogCheck(
        misplaced_events(events),
        runtime,
        forged_runtime_events(runtime, recomputed),
        replay(events, recomputed),
    )


def forged_runtime_events(
    runtime: list[Event], recomputed: Recomputed | None = None
) -> list[Event]:
    """Those of `runtime` (see runtime_events) whose supplied digest is not that
    of their payload (a left-out digest claims nothing: the replay recomputes
    it); for V2, also those whose published pre-image is missing or is not the
    canonical one (cc-eventlog validate_v2_preimages)."""
    if recomputed is None:
        recomputed = recompute(runtime)
    forged: list[Event] = []
    for e in runtime:
        if (e.digest and recomputed[e.position] != e.digest) or (
            e.version == 2
            and (
                e.preimage is None
                or e.preimage.lower() != runtime_event_preimage(e.name, e.payload, 2).hex()
            )
        ):
            forged.append(e)
    return forged
