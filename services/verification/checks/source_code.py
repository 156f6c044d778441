"""source_code: event log integrity, RTMR replay, compose hash, app id, on-chain."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from ..eventlog import RTMR_COUNT, Event, forged_runtime_events, replay, runtime_events
from ..hexutil import normalize_hex
from .context import CheckContext, Outcome, unverified


class ComposeHashRegistry(Protocol):
    """Answers whether an app's on-chain contract allows a compose hash."""

    def is_allowed(self, contract_address: str, compose_hash: bytes) -> bool: ...


def _single_event(runtime: list[Event], name: str) -> tuple[Event | None, str]:
    found = [e for e in runtime if e.name == name]
    if not found:
        return None, f"the event log has no RTMR3 '{name}' event"
    if len(found) > 1:
        return None, f"the event log has {len(found)} '{name}' events; expected one"
    return found[0], ""


def check_source_code(ctx: CheckContext, registry: ComposeHashRegistry | None) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    if ctx.events is None:
        return Outcome.failed("no event log in the evidence: nothing to replay")
    events = ctx.events
    runtime = runtime_events(events)
    details: dict[str, Any] = {"event_count": len(events)}

    # 1. Recompute every runtime event digest: replaying supplied digests alone
    # would accept a forged payload.
    forged = forged_runtime_events(runtime)
    if forged:
        names = ", ".join(f"#{e.position} '{e.name}'" for e in forged)
        return Outcome.failed(f"event digest does not match its payload: {names}", **details)

    # 2. Replay must reproduce the verified RTMRs.
    replayed = replay(events)
    for i in range(RTMR_COUNT):
        quoted = ctx.attested.register(f"rt_mr{i}")
        if replayed[i] != quoted:
            return Outcome.failed(
                f"RTMR{i} replayed from the event log ({replayed[i].hex()}) differs from "
                f"the quote's ({quoted.hex()})",
                **details,
            )
    details["rtmrs_replayed"] = True

    # 3. Compose hash.
    event, problem = _single_event(runtime, "compose-hash")
    if event is None:
        return Outcome.failed(problem, **details)
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

    # 4. App id, when the task names one.
    if ctx.request.app_id:
        app_event, problem = _single_event(runtime, "app-id")
        if app_event is None:
            return Outcome.failed(problem, **details)
        if app_event.payload.hex() != normalize_hex(ctx.request.app_id):
            return Outcome.failed(
                f"app-id event ({app_event.payload.hex()}) differs from the task's app id "
                f"({ctx.request.app_id})",
                **details,
            )
        details["app_id"] = app_event.payload.hex()

    # 5. mr_config_id carries 0x01 || compose_hash when dstack set it.
    mr_config_id = ctx.attested.register("mr_config_id")
    if mr_config_id[:1] == b"\x01":
        if mr_config_id[1:33] != attested_hash:
            return Outcome.failed(
                f"mr_config_id carries compose hash {mr_config_id[1:33].hex()}, but the "
                f"compose-hash event says {attested_hash.hex()}",
                **details,
            )
        details["mr_config_id"] = "carries the compose hash"
    else:
        details["mr_config_id"] = "carries no compose hash"

    # 6. On-chain governance, when configured and the task names a contract.
    if ctx.request.contract_address:
        if registry is None:
            details["on_chain"] = "not checked (no Ethereum RPC URL configured)"
        else:
            try:
                allowed = registry.is_allowed(ctx.request.contract_address, attested_hash)
            except Exception as exc:
                return Outcome.error(f"on-chain compose hash lookup failed: {exc}", **details)
            if not allowed:
                return Outcome.failed(
                    f"contract {ctx.request.contract_address} does not allow compose hash "
                    f"{attested_hash.hex()}",
                    **details,
                )
            details["on_chain"] = "allowed by the app contract"

    return Outcome.passed(
        f"event log replays to the quote's RTMR0-3; compose hash matches {source}", **details
    )
