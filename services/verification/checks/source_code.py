"""source_code: event-log rules, RTMR replay, compose hash, app id, mr_config_id, on-chain.

The event-log rules are dstack's (see eventlog.py): registers hold only the
events they may hold, every runtime event's digest is recomputed, identity is
read before system-ready only, and a second identity event there is a failure.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Protocol

import orjson
from Crypto.Hash import keccak

from ..eventlog import RTMR_COUNT, Event, describe, read_identity
from ..hexutil import normalize_hex
from .context import CheckContext, Outcome, log_check, unverified


class ComposeHashRegistry(Protocol):
    """Answers whether an app's on-chain contract allows a compose hash, as of `at`."""

    def is_allowed(self, contract_address: str, compose_hash: bytes, at: datetime) -> bool: ...


# dstack-types KeyProviderKind as mr_config_id v2 encodes it (mr_config.rs).
_KEY_PROVIDER_KIND = {"none": 0, "local-sgx": 1, "kms": 2, "tpm": 3}


def parse_key_provider(payload: bytes) -> dict[str, str] | None:
    """The key-provider event's `{"name": ..., "id": hex}`, or None if it is not that."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    name, key_id = doc.get("name"), doc.get("id", "")
    if not isinstance(name, str) or not isinstance(key_id, str):
        return None
    return {"name": name, "id": key_id.lower().removeprefix("0x")}


def mr_config_id_v2(
    compose_hash: bytes, app_id: bytes, provider_kind: int, provider_id: bytes
) -> bytes:
    """0x02 || keccak256(compose_hash || app_id || kind || provider_id), 48 bytes."""
    digest = keccak.new(digest_bits=256, data=compose_hash + app_id)
    digest.update(bytes([provider_kind]) + provider_id)
    return (b"\x02" + digest.digest()).ljust(48, b"\x00")


def _check_mr_config_id(
    mr_config_id: bytes, compose_hash: bytes, identity: dict[str, Event]
) -> tuple[str, str]:
    """(problem, description): an empty problem means it agrees with the event log."""
    if mr_config_id == bytes(len(mr_config_id)):
        return "", "carries no compose hash"
    version = mr_config_id[0]
    if version == 1:
        if mr_config_id[1:33] != compose_hash:
            return (
                f"mr_config_id carries compose hash {mr_config_id[1:33].hex()}, but the "
                f"compose-hash event says {compose_hash.hex()}",
                "",
            )
        return "", "carries the compose hash"
    if version == 2:
        app_id = identity.get("app-id")
        provider = identity.get("key-provider")
        info = parse_key_provider(provider.payload) if provider else None
        if app_id is None or info is None or info["name"] not in _KEY_PROVIDER_KIND:
            return (
                "mr_config_id has the v2 form, which needs the app-id and a key-provider "
                "event naming a known provider (none, local-sgx, kms, tpm) before system-ready",
                "",
            )
        try:
            provider_id = bytes.fromhex(info["id"])
        except ValueError:
            return f"key-provider id {info['id']!r} is not hex", ""
        expected = mr_config_id_v2(
            compose_hash, app_id.payload, _KEY_PROVIDER_KIND[info["name"]], provider_id
        )
        if mr_config_id != expected:
            return (
                f"mr_config_id {mr_config_id.hex()} (v2) differs from the one the event log "
                f"implies ({expected.hex()}: compose hash, app id and key provider)",
                "",
            )
        return "", "carries the compose hash, app id and key provider (v2)"
    return (
        f"mr_config_id has version {version}, which this verifier cannot check "
        "(v3 needs the mr_config document)",
        "",
    )


def _identity_details(identity: dict[str, Event], app_events: list[Event]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    for name in ("instance-id", "os-image-hash", "mr-kms"):
        if name in identity:
            details[name.replace("-", "_")] = identity[name].payload.hex()
    provider = identity.get("key-provider")
    if provider is not None:
        details["key_provider"] = parse_key_provider(provider.payload) or {
            "raw": provider.payload.decode("utf-8", "replace")
        }
    if app_events:
        # Reported, never used as identity (dstack: application-controlled).
        details["app_events"] = [describe(e) for e in app_events]
    return details


def check_source_code(ctx: CheckContext, registry: ComposeHashRegistry | None) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    if ctx.events is None:
        return Outcome.failed("no event log in the evidence: nothing to replay")
    events = ctx.events
    details: dict[str, Any] = {"event_count": len(events)}

    checked = log_check(ctx, events)
    # 1. Each register holds only the events it may hold.
    if checked.misplaced:
        return Outcome.failed("; ".join(checked.misplaced), **details)

    # 2. Recompute every runtime event digest: replaying supplied digests alone
    # would accept a forged payload.
    runtime = checked.runtime
    if checked.forged:
        names = ", ".join(describe(e) for e in checked.forged)
        return Outcome.failed(f"event digest does not match its payload: {names}", **details)

    # 3. Replay must reproduce the verified RTMRs.
    replayed = checked.registers
    for i in range(RTMR_COUNT):
        quoted = ctx.attested.register(f"rt_mr{i}")
        if replayed[i] != quoted:
            return Outcome.failed(
                f"RTMR{i} replayed from the event log ({replayed[i].hex()}) differs from "
                f"the quote's ({quoted.hex()})",
                **details,
            )
    details["rtmrs_replayed"] = True

    # 4. Identity, before system-ready only.
    identity, app_events, system_ready, duplicates = read_identity(runtime)
    details.update(_identity_details(identity, app_events))
    if duplicates:
        return Outcome.failed("; ".join(duplicates), **details)
    if not system_ready:
        details["system_ready"] = False

    # 5. Compose hash.
    event = identity.get("compose-hash")
    if event is None:
        return Outcome.failed(
            "the event log has no 'compose-hash' event before system-ready", **details
        )
    attested_hash = event.payload
    details["compose_hash"] = attested_hash.hex()
    compose_text = ctx.request.evidence.app_compose
    expected_hex = normalize_hex(ctx.request.expected_compose_hash)
    if compose_text is not None:
        expected = hashlib.sha256(compose_text.encode("utf-8")).digest()
        source = "sha256 of the app-compose text"
    elif expected_hex:
        expected = bytes.fromhex(expected_hex)
        source = "the expected compose hash given with the task"
    else:
        return Outcome.failed(
            "cannot check the compose hash: neither the app-compose text nor an expected "
            "compose hash was given",
            **details,
        )
    details["compose_hash_source"] = source
    if attested_hash != expected:
        return Outcome.failed(
            f"compose-hash event ({attested_hash.hex()}) differs from {source} ({expected.hex()})",
            **details,
        )

    # 6. App id, when the task names one.
    app_event = identity.get("app-id")
    if app_event is not None:
        details["app_id"] = app_event.payload.hex()
    if ctx.request.app_id:
        if app_event is None:
            return Outcome.failed(
                "the event log has no 'app-id' event before system-ready", **details
            )
        if app_event.payload.hex() != normalize_hex(ctx.request.app_id):
            return Outcome.failed(
                f"app-id event ({app_event.payload.hex()}) differs from the expected app id "
                f"({ctx.request.app_id})",
                **details,
            )

    # 7. mr_config_id (v1: 0x01 || compose hash; v2: 0x02 || keccak of the identity).
    problem, description = _check_mr_config_id(
        ctx.attested.register("mr_config_id"), attested_hash, identity
    )
    if problem:
        return Outcome.failed(problem, **details)
    details["mr_config_id"] = description

    # 8. On-chain governance, when the task names a contract: never a silent pass.
    if ctx.request.contract_address:
        if registry is None:
            details["on_chain"] = "not checked (no Ethereum RPC URL configured)"
            return Outcome.error(
                f"the task names contract {ctx.request.contract_address}, but no chain RPC "
                "is configured (ETH_RPC_URL): the on-chain compose hash was not checked",
                **details,
            )
        try:
            allowed = registry.is_allowed(
                ctx.request.contract_address, attested_hash, ctx.request.evaluated_at
            )
        except Exception as exc:
            return Outcome.error(f"on-chain compose hash lookup failed: {exc}", **details)
        if not allowed:
            return Outcome.failed(
                f"contract {ctx.request.contract_address} does not allow compose hash "
                f"{attested_hash.hex()}",
                **details,
            )
        details["on_chain"] = "allowed by the app contract"
        block = getattr(registry, "last_block", "")
        if block:
            details["on_chain_block"] = block

    return Outcome.passed(
        f"event log replays to the quote's RTMR0-3; compose hash matches {source}", **details
    )
