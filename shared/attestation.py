"""Names every service shares about one verification, as in verification.v1:
the checks in report order (verification.v1.Check without its prefix) and the
inline evidence fields (verification.v1.Evidence). One list, so the tasks and
verification services cannot drift apart."""

from __future__ import annotations

import re

CHECK_NAMES: tuple[str, ...] = (
    "hardware",
    "os",
    "source_code",
    "tee_controlled_key",
    "certificate_key",
    "dns_caa",
    "ct_log",
)

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
