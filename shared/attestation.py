"""Names every service shares about one verification, as in verification.v1:
the checks in report order (verification.v1.Check without its prefix) and the
inline evidence fields (verification.v1.Evidence). One list, so the tasks and
verification services cannot drift apart."""

from __future__ import annotations

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
)
