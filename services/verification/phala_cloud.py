"""The Phala Cloud attestations response, read as the API returns it (pure, no I/O).

`GET {PHALA_CLOUD_API_URL}/api/v1/apps/{app_id}/attestations`. Field names follow
the reference system's SystemInfoSchema (Phala-Network/trust-center,
packages/verifier/src/schemas.ts): `instances[]` (quote, event log at
`eventlog` or `tcb_info.event_log`, `tcb_info.app_compose`), `kms_info`,
`kms_guest_agent_info` and `gateway_guest_agent_info` (GuestAgentInfoSchema:
`tcb_info.event_log`, `tcb_info.app_compose`, `vm_config` as JSON text,
`app_certificates[]` whose entries may carry a quote). A field of the wrong
type is EvidenceMalformed naming it, path and all.
"""

from __future__ import annotations

import json
from typing import Any

from .chain import PART_GATEWAY, PART_KMS, ChainEvidence, PartEvidence, instance_part
from .errors import EvidenceMalformed
from .eventlog import parse_event_log
from .evidence import MAX_QUOTE_BYTES, evidence_from_dict
from .hexutil import decode_hex
from .model import Evidence

ATTESTATIONS_PATH = "/api/v1/apps/{app_id}/attestations"
MAX_INSTANCES = 64
MAX_CERTIFICATES = 16


def attestations_url(base: str, app_id: str) -> str:
    """The attestations URL: the bare base plus the path, added once."""
    return base.rstrip("/") + ATTESTATIONS_PATH.format(app_id=app_id)


def maybe_json(value: Any) -> Any:
    """Fields the dstack APIs sometimes deliver as JSON text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _get(doc: dict[str, Any], name: str, where: str, kinds: tuple[type, ...]) -> Any:
    """doc[name] if absent, null or of one of `kinds`; else EvidenceMalformed naming it."""
    value = doc.get(name)
    if value is None or isinstance(value, kinds):
        return value
    expected = " or ".join(
        k.__name__.replace("str", "string").replace("dict", "object") for k in kinds
    )
    raise EvidenceMalformed(
        f"{where}{name}", f"expected {expected} or null, got {type(value).__name__}"
    )


def _object(value: Any, where: str) -> dict[str, Any]:
    value = maybe_json(value)
    if not isinstance(value, dict):
        raise EvidenceMalformed(where, f"expected an object, got {type(value).__name__}")
    return value


def _renamed(exc: EvidenceMalformed, prefix: str, local: str, remote: str) -> EvidenceMalformed:
    """`exc` with its field named as in the response (event_log[3] -> instances[0].eventlog[3])."""
    name = exc.field
    if name.startswith(local):
        name = remote + name[len(local) :]
    return EvidenceMalformed(prefix + name, exc.message)


def _event_log(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        text = json.dumps(value, separators=(",", ":"))
    else:
        raise EvidenceMalformed(where, f"expected a list of events, got {type(value).__name__}")
    try:
        parse_event_log(text)  # name a bad entry by its place in the response
    except EvidenceMalformed as exc:
        raise _renamed(exc, "", "event_log", where) from None
    return text


def _evidence(fields: dict[str, Any], where: str, quote_field: str) -> Evidence:
    try:
        return evidence_from_dict(fields)
    except EvidenceMalformed as exc:
        local = "quote" if exc.field == "quote" else exc.field
        raise _renamed(exc, where, local, quote_field if local == "quote" else local) from None


def _quote_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EvidenceMalformed(where, "expected a hex string")
    if len(value) > 2 * MAX_QUOTE_BYTES + 2:
        raise EvidenceMalformed(where, f"too large (at most {MAX_QUOTE_BYTES} bytes)")
    return value


def _instance(doc: Any, index: int) -> PartEvidence | None:
    where = f"instances[{index}]"
    item = _object(doc, where)
    quote = _get(item, "quote", f"{where}.", (str,))
    if not quote:
        return None  # stopped: no quote, nothing to verify
    tcb_info = maybe_json(item.get("tcb_info"))
    if tcb_info is not None and not isinstance(tcb_info, dict):
        raise EvidenceMalformed(f"{where}.tcb_info", "expected an object or null")
    tcb = tcb_info or {}
    if item.get("eventlog") is not None:
        event_log = _event_log(item["eventlog"], f"{where}.eventlog")
    else:
        event_log = _event_log(tcb.get("event_log"), f"{where}.tcb_info.event_log")
    fields: dict[str, Any] = {"quote": _quote_text(quote, f"{where}.quote"), "event_log": event_log}
    compose = _get(tcb, "app_compose", f"{where}.tcb_info.", (str,))
    if compose is not None:
        fields["app_compose"] = compose
    instance_id = _get(item, "instance_id", f"{where}.", (str,)) or str(index)
    evidence = _evidence(fields, f"{where}.", "quote")
    return PartEvidence(instance_part(instance_id), evidence)


def _guest_agent(
    doc: Any, name: str, part: str, expected_app_id: str
) -> tuple[PartEvidence | None, str]:
    """A KMS or gateway part from its guest-agent info; (None, why) when it has no quote."""
    info = _object(doc, name)
    tcb = _object(info.get("tcb_info"), f"{name}.tcb_info")
    certificates = _get(info, "app_certificates", f"{name}.", (list,)) or []
    if len(certificates) > MAX_CERTIFICATES:
        raise EvidenceMalformed(f"{name}.app_certificates", f"more than {MAX_CERTIFICATES} entries")
    quotes: list[tuple[int, str]] = []
    for i, entry in enumerate(certificates):
        where = f"{name}.app_certificates[{i}]"
        cert = _object(entry, where)
        quote = _get(cert, "quote", f"{where}.", (str,))
        if quote:
            quotes.append((i, _quote_text(quote, f"{where}.quote")))
    if not quotes:
        return None, f"{name} has no certificate entry that carries a quote"
    first, quote = quotes[0]
    fields: dict[str, Any] = {
        "quote": quote,
        "event_log": _event_log(tcb.get("event_log"), f"{name}.tcb_info.event_log"),
    }
    compose = _get(tcb, "app_compose", f"{name}.tcb_info.", (str,))
    if compose is not None:
        fields["app_compose"] = compose
    vm_config = maybe_json(info.get("vm_config"))
    if vm_config is not None:
        if not isinstance(vm_config, dict):
            raise EvidenceMalformed(f"{name}.vm_config", "expected a JSON object (or its text)")
        fields["vm_config"] = vm_config
    evidence = _evidence(fields, f"{name}.", f"app_certificates[{first}].quote")
    others = tuple(decode_hex(q, f"{name}.app_certificates[{i}].quote") for i, q in quotes[1:])
    return PartEvidence(part, evidence, expected_app_id, others), ""


def parse_system_info(doc: Any, app_id: str) -> ChainEvidence:
    """The app's chain from the attestations response (EvidenceMalformed names a bad field)."""
    root = _object(doc, "response")
    instances_value = root.get("instances")
    if not isinstance(instances_value, list):
        raise EvidenceMalformed("instances", "expected a list of instances")
    if len(instances_value) > MAX_INSTANCES:
        raise EvidenceMalformed("instances", f"more than {MAX_INSTANCES} instances")
    instances = tuple(
        part for i, item in enumerate(instances_value) if (part := _instance(item, i)) is not None
    )
    kms_info = _object(root.get("kms_info") or {}, "kms_info")
    gateway_app_id = _get(kms_info, "gateway_app_id", "kms_info.", (str,)) or ""
    contract = _get(root, "contract_address", "", (str,)) or ""
    missing: dict[str, str] = {}
    kms: PartEvidence | None = None
    gateway: PartEvidence | None = None
    if root.get("kms_guest_agent_info") is None:
        missing[PART_KMS] = "the response has no kms_guest_agent_info"
    else:
        kms, why = _guest_agent(root["kms_guest_agent_info"], "kms_guest_agent_info", PART_KMS, "")
        if why:
            missing[PART_KMS] = why
    if root.get("gateway_guest_agent_info") is None:
        missing[PART_GATEWAY] = "the response has no gateway_guest_agent_info"
    else:
        gateway, why = _guest_agent(
            root["gateway_guest_agent_info"],
            "gateway_guest_agent_info",
            PART_GATEWAY,
            gateway_app_id.lower().removeprefix("0x"),
        )
        if why:
            missing[PART_GATEWAY] = why
    reported = {
        k: v
        for k, v in kms_info.items()
        if k
        in (
            "url",
            "version",
            "gateway_app_id",
            "gateway_app_url",
            "chain_id",
            "kms_type",
            "contract_address",
        )
    }
    return ChainEvidence(
        app_id=app_id,
        instances=instances,
        kms=kms,
        gateway=gateway,
        contract_address=contract,
        kms_info=reported,
        missing=missing,
    )
