"""dstack event log: parsing, runtime-event digests and RTMR replay.

Layout checked against dstack's cc-eventlog (runtime_events.rs) and the
quote-report.json vector: a runtime event extends RTMR3 with
sha384(le32(event_type) || ":" || name || ":" || payload).
"""

from __future__ import annotations

import hashlib
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


_RUNTIME_TYPE_LE32 = struct.pack("<I", DSTACK_RUNTIME_EVENT_TYPE)


def runtime_events(events: list[Event]) -> list[Event]:
    """The dstack runtime events (RTMR3, type 0x08000001), in log order."""
    return [e for e in events if e.imr == 3 and e.event_type == DSTACK_RUNTIME_EVENT_TYPE]


def runtime_event_digest(event_type: int, name: str, payload: bytes) -> bytes:
    type_le32 = (
        _RUNTIME_TYPE_LE32
        if event_type == DSTACK_RUNTIME_EVENT_TYPE
        else struct.pack("<I", event_type)
    )
    return hashlib.sha384(b"".join((type_le32, b":", name.encode("utf-8"), b":", payload))).digest()


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
    name, payload, digest = item.get("event", ""), item.get("event_payload", ""), item.get("digest")
    if not isinstance(name, str) or not isinstance(payload, str):
        return EvidenceMalformed(where, "event and event_payload must be strings")
    if not isinstance(digest, str):
        return EvidenceMalformed(f"{where}.digest", "expected a hex string")
    try:
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
            digest_hex = item["digest"]
            name = item.get("event", "")
            payload_hex = item.get("event_payload", "")
            digest = bytes.fromhex(digest_hex)
            payload = bytes.fromhex(payload_hex)
        except (TypeError, KeyError, ValueError, AttributeError):
            raise _explain(i, item) from None
        if (
            type(imr) is not int
            or not 0 <= imr < RTMR_COUNT
            or type(event_type) is not int
            or not 0 <= event_type <= 0xFFFFFFFF
            or type(name) is not str
            or len(digest) != DIGEST_LEN
            or len(digest_hex) != 2 * DIGEST_LEN
            or len(payload_hex) != 2 * len(payload)
        ):
            raise _explain(i, item)
        append(make(Event, (i, imr, event_type, digest, name, payload)))
    return events


def replay(events: list[Event]) -> list[bytes]:
    """RTMR values after extending each register with its events' digests."""
    registers = [bytes(DIGEST_LEN)] * RTMR_COUNT
    for event in events:
        registers[event.imr] = hashlib.sha384(registers[event.imr] + event.digest).digest()
    return registers


def forged_runtime_events(runtime: list[Event]) -> list[Event]:
    """Those of `runtime` (see runtime_events) whose digest is not that of their payload."""
    return [e for e in runtime if runtime_event_digest(e.event_type, e.name, e.payload) != e.digest]
