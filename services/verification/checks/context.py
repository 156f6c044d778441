"""What the checks share: the request, the verified quote, the parsed event log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..collateral import CollateralBundle
from ..eventlog import Event, LogCheck, check_log
from ..model import CheckStatus, VerificationRequest
from ..quote import ParsedQuote


@dataclass(frozen=True)
class AttestedQuote:
    """A quote dcap-qvl verified: its TCB status and the verified report fields (hex)."""

    tcb_status: str
    advisory_ids: tuple[str, ...]
    body_type: str
    fields: dict[str, Any]
    qe_status: str = ""
    platform_status: str = ""

    def register(self, name: str) -> bytes:
        value = self.fields.get(name)
        return bytes.fromhex(value) if isinstance(value, str) else b""


class QuoteUnverifiable(Exception):
    """A further quote (in a certificate, in acme-info) could not be checked
    here, e.g. no collateral at hand: the check reports `error`, not `failed`."""


# Verify a further quote as the main one is verified: (attested, "") when
# dcap-qvl accepts it, its TCB status is allowed and it is no debug TD; else
# (None, why). Raises QuoteUnverifiable when it cannot be checked at all.
QuoteVerifier = Callable[[bytes], tuple[AttestedQuote | None, str]]


@dataclass
class CheckContext:
    request: VerificationRequest
    parsed: ParsedQuote
    attested: AttestedQuote | None
    attestation_problem: str
    collateral: CollateralBundle | None
    events: list[Event] | None
    verify_quote: QuoteVerifier | None = None
    # Results several checks of one verification share (a certificate's binding).
    memo: dict[Any, Any] = field(default_factory=dict)


def log_check(ctx: CheckContext, events: list[Event]) -> LogCheck:
    """The event-log rules' one pass over `events`, made once per verification
    however many checks read it (kept beside the very list it was made from)."""
    memo = ctx.memo.get("log_check")
    if memo is not None and memo[0] is events:
        checked: LogCheck = memo[1]
        return checked
    checked = check_log(events)
    ctx.memo["log_check"] = (events, checked)
    return checked


@dataclass(frozen=True)
class Outcome:
    status: CheckStatus
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, reason: str, **details: Any) -> Outcome:
        return cls(CheckStatus.PASSED, reason, details)

    @classmethod
    def failed(cls, reason: str, **details: Any) -> Outcome:
        return cls(CheckStatus.FAILED, reason, details)

    @classmethod
    def error(cls, reason: str, **details: Any) -> Outcome:
        return cls(CheckStatus.ERROR, reason, details)


def unverified(ctx: CheckContext) -> Outcome:
    """The outcome of a check that needs verified quote fields when there are none."""
    return Outcome.failed(
        f"quote fields are not verified ({ctx.attestation_problem}); "
        "this check does not trust unverified registers"
    )
