"""os: MRTD and RTMR0-2 of the verified quote against known-good OS images."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvidenceMalformed
from ..hexutil import decode_hex
from .context import CheckContext, Outcome, unverified

_REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
# Names of the same registers in dcap-qvl's verified report.
_QUOTE_FIELDS = {"mrtd": "mr_td", "rtmr0": "rt_mr0", "rtmr1": "rt_mr1", "rtmr2": "rt_mr2"}


@dataclass(frozen=True)
class OsImage:
    """One allowlist entry. RTMR0 depends on the VM shape (CPUs, memory, GPUs),
    so an entry holds only for the vm_config it names."""

    version: str
    registers: tuple[str, str, str, str]  # lower-case hex, in _REGISTERS order
    vm_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""


class OsAllowlistError(ValueError):
    """An allowlist file an operator must fix (raised at start-up, not per task)."""


def load_allowlist(paths: tuple[Path, ...] | list[Path]) -> tuple[OsImage, ...]:
    images: list[OsImage] = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise OsAllowlistError(f"cannot read OS allowlist {path}: {exc}") from None
        entries = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise OsAllowlistError(f"{path}: expected an object with an 'images' array")
        for i, entry in enumerate(entries):
            where = f"{path}: images[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                raise OsAllowlistError(f"{where}: needs a 'version' string")
            regs: list[str] = []
            for reg in _REGISTERS:
                value = entry.get(reg)
                if not isinstance(value, str):
                    raise OsAllowlistError(f"{where}: needs '{reg}'")
                try:
                    regs.append(decode_hex(value, reg, expected_len=48).hex())
                except EvidenceMalformed as exc:
                    raise OsAllowlistError(f"{where}: {exc}") from None
            vm_config = entry.get("vm_config", {})
            images.append(
                OsImage(
                    version=entry["version"],
                    registers=(regs[0], regs[1], regs[2], regs[3]),
                    vm_config=vm_config if isinstance(vm_config, dict) else {},
                    source=str(entry.get("source", "")),
                )
            )
    return tuple(images)


def check_os(ctx: CheckContext, allowlist: tuple[OsImage, ...]) -> Outcome:
    if ctx.attested is None:
        return unverified(ctx)
    if not ctx.parsed.is_tdx:
        return Outcome.failed("not a TDX quote: there are no MRTD / RTMR registers to check")
    # The verified fields are already lower-case hex, the allowlist's form.
    fields = ctx.attested.fields
    measured = tuple(str(fields.get(_QUOTE_FIELDS[r], "")) for r in _REGISTERS)
    details: dict[str, Any] = dict(zip(_REGISTERS, measured, strict=True))
    for image in allowlist:
        if image.registers == measured:
            return Outcome.passed(
                f"MRTD and RTMR0-2 match OS image {image.version}",
                **details,
                image_version=image.version,
                image_vm_config=image.vm_config,
            )
    # Name the registers that match no entry at all: usually one of them is the culprit.
    unknown = [
        reg
        for i, reg in enumerate(_REGISTERS)
        if all(image.registers[i] != measured[i] for image in allowlist)
    ]
    return Outcome.failed(
        f"MRTD/RTMR0-2 match no allowlisted OS image ({len(allowlist)} entries); "
        f"registers found in no entry: {', '.join(unknown) or 'none (a mixed combination)'}",
        **details,
    )
