"""What a verified quote's event log attests: the dstack identity events.

Event-log rules are dstack's (dstack-attest): runtime events are those of
type 0x08000001 on RTMR3, each digest recomputed from name and payload; RTMR3
is replayed from them and must equal the verified quote's RTMR3; identity
events (app-id, compose-hash, instance-id, os-image-hash, key-provider,
mr-kms) count only before `system-ready`. Shared by the os check, the RA-TLS
certificates and the gateway's quoted keys, which all need the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .eventlog import Event, LogCheck, check_log, read_identity


@dataclass(frozen=True)
class AttestedIdentity:
    """Identity payloads (hex) that a verified RTMR3 vouches for."""

    values: dict[str, str]

    def get(self, name: str) -> str:
        return self.values.get(name, "")


class IdentityProblem(ValueError):
    """The event log cannot be trusted for identity (the reason says why)."""


def attested_identity(
    events: list[Event], verified_rtmr3: bytes, checked: LogCheck | None = None
) -> AttestedIdentity:
    """The identity events of `events`, once the log is shown to be the one
    the quote measured. Raises IdentityProblem otherwise. `checked`: the
    verification's one pass of the rules over `events`, when it has it."""
    checked = checked or check_log(events)
    if checked.misplaced:
        raise IdentityProblem(checked.misplaced[0])
    runtime = checked.runtime
    if checked.forged:
        names = ", ".join(f"#{e.position} '{e.name}'" for e in checked.forged)
        raise IdentityProblem(f"event digest does not match its payload: {names}")
    replayed = checked.registers[3]
    if replayed != verified_rtmr3:
        raise IdentityProblem(
            f"RTMR3 replayed from the event log ({replayed.hex()}) differs from the "
            f"verified quote's ({verified_rtmr3.hex()})"
        )
    identity = read_identity(runtime)
    if identity.duplicates:
        raise IdentityProblem(identity.duplicates[0])
    return AttestedIdentity({name: e.payload.hex() for name, e in identity.identity.items()})
