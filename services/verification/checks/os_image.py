"""os: MRTD and RTMR0-2 of the verified quote against the OS image's reference
values for the evidence's VM shape.

Which image: the `os-image-hash` event of the replayed event log (before
`system-ready`) when the log carries one; dstack versions that do not measure
it into RTMR3 name the image only in vm_config. That claim is not attested by
itself, but it cannot help an attacker: the registers must still equal that
very image's reference values, which the operator vouched for.
"""

from __future__ import annotations

from typing import Any

from ..errors import EvidenceMalformed
from ..identity import IdentityProblem, attested_identity
from ..os_image_store import OsImageCatalog
from ..os_images import REGISTERS, image_hash, match_os, parse_vm_config, shape_of
from .context import CheckContext, Outcome, log_check, unverified

# Names of the same registers in dcap-qvl's verified report.
QUOTE_FIELDS = {"mrtd": "mr_td", "rtmr0": "rt_mr0", "rtmr1": "rt_mr1", "rtmr2": "rt_mr2"}


def verified_registers(fields: dict[str, Any]) -> dict[str, str]:
    return {r: str(fields.get(QUOTE_FIELDS[r], "")) for r in REGISTERS}


def _which_image(ctx: CheckContext, vm_config: dict[str, Any]) -> tuple[str, str]:
    """(os_image_hash, where it came from); raises IdentityProblem/EvidenceMalformed."""
    from_log = ""
    if ctx.events is not None and ctx.attested is not None:
        identity = attested_identity(
            ctx.events, ctx.attested.register("rt_mr3"), log_check(ctx, ctx.events)
        )
        from_log = identity.get("os-image-hash")
    claimed = vm_config.get("os_image_hash")
    from_config = image_hash(claimed, "vm_config.os_image_hash") if claimed else ""
    if from_log:
        if from_config and from_config != from_log:
            raise IdentityProblem(
                f"vm_config names OS image {from_config} but the event log attests {from_log}"
            )
        return from_log, "event log (os-image-hash)"
    if from_config:
        return from_config, "vm_config (the event log has no os-image-hash event)"
    return "", ""


def check_os(ctx: CheckContext, catalog: OsImageCatalog, allow_dev: bool = False) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    if not ctx.parsed.is_tdx:
        return Outcome.failed("not a TDX quote: there are no MRTD / RTMR registers to check")
    registers = verified_registers(ctx.attested.fields)
    try:
        vm_config = parse_vm_config(ctx.request.evidence.vm_config)
        os_hash, source = _which_image(ctx, vm_config)
        shape = shape_of(vm_config)
    except (IdentityProblem, EvidenceMalformed) as exc:
        return Outcome.failed(f"cannot tell which OS image booted: {exc}", **registers)
    if not os_hash:
        return Outcome.failed(
            "cannot tell which OS image booted: neither the event log nor vm_config "
            "names an os_image_hash",
            **registers,
        )
    try:
        entry = catalog.find(os_hash)
    except Exception as exc:
        # The store failed: the check could not run, which is not a failure of the app.
        return Outcome.error(f"OS image store lookup failed: {type(exc).__name__}: {exc}")
    result = match_os(entry, os_hash, shape, registers, allow_dev=allow_dev)
    details = result.details | {"os_image_hash_source": source}
    if result.ok:
        return Outcome.passed(result.reason, **details)
    return Outcome.failed(result.reason, **details)
