"""Names every service shares about one verification, as in verification.v1:
the checks in report order (verification.v1.Check without its prefix) and the
inline evidence fields (verification.v1.Evidence), and which checks a task
runs (`VerificationFlags`, with the reference system's defaults). One list,
so the tasks and verification services cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CHECK_NAMES: tuple[str, ...] = (
    "hardware",
    "os",
    "source_code",
    "tee_controlled_key",
    "certificate_key",
    "dns_caa",
    "ct_log",
)


@dataclass(frozen=True)
class VerificationFlags:
    """Which checks run, one flag per check (named after it). The defaults are
    the reference system's task defaults."""

    hardware: bool = True
    os: bool = True
    source_code: bool = True
    tee_controlled_key: bool = True
    certificate_key: bool = True
    dns_caa: bool = False
    ct_log: bool = False

    @classmethod
    def only(cls, names: list[str] | tuple[str, ...] | set[str]) -> VerificationFlags:
        """Flags with exactly `names` enabled; unknown names raise ValueError."""
        unknown = set(names) - set(CHECK_NAMES)
        if unknown:
            raise ValueError(f"unknown check(s): {', '.join(sorted(unknown))}")
        return cls(**{name: name in names for name in CHECK_NAMES})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationFlags:
        return cls(**{k: bool(v) for k, v in data.items() if k in CHECK_NAMES})

    def enabled(self) -> list[str]:
        return [name for name in CHECK_NAMES if getattr(self, name)]

    def to_dict(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in CHECK_NAMES}


assert tuple(VerificationFlags.__dataclass_fields__) == CHECK_NAMES  # a flag per check


EVIDENCE_FIELDS: tuple[str, ...] = (
    "quote",
    "event_log",
    "vm_config",
    "report_data",
    "app_compose",
    "certificate_chain",
    "collateral",
    "acme_account_uri",
    "acme_info",
)

# The size bound of each inline evidence field, in bytes of the text as sent
# (the quote as hex), as verification.v1.Evidence's comments state them. The
# tasks service refuses a larger field at CreateTask; the verification service
# refuses it again before parsing (fetched evidence included).
EVIDENCE_LIMITS: dict[str, int] = {
    "quote": 64 * 1024,
    "event_log": 1024 * 1024,
    "vm_config": 64 * 1024,
    "report_data": 4 * 1024,
    "app_compose": 256 * 1024,
    "certificate_chain": 64 * 1024,
    "collateral": 256 * 1024,
    "acme_account_uri": 4 * 1024,
    # The gateway's acme-info: a quote with its event log per certificate key.
    "acme_info": 2 * 1024 * 1024,
}
assert set(EVIDENCE_LIMITS) == set(EVIDENCE_FIELDS)

# What the evidence sources accept, checked by the tasks service at CreateTask
# (a task that cannot be fetched is refused there, not failed later) and by
# the verification service's fetchers before any request leaves the host.
PHALA_CLOUD_APP_ID = re.compile(r"^(0x)?[0-9a-fA-F]{1,64}$")  # a dstack app id, hex
REDPILL_MODEL = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")  # a model name, e.g. org/model
