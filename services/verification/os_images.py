"""OS reference values: entries per dstack OS image, measurements per VM shape.

Pure domain (no I/O): the entry model and its JSON form, the import formats
(our own entries, dstack-mr's `--json` output, a trusted deployment's
evidence) and the matching rules of the os check. The store lives in
os_image_store.py.

MRTD and RTMR1-2 depend on the image, RTMR0 also on the VM's shape (CPUs,
memory, GPUs, QEMU's build options), so an image holds one measurement per
shape it was measured or observed on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import EvidenceMalformed

REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2")
# The vm_config fields that change the measurements (dstack-mr's inputs).
SHAPE_FIELDS = (
    "cpu_count",
    "memory_size",
    "num_gpus",
    "num_nvswitches",
    "hugepages",
    "pic",
    "qemu_single_pass_add_pages",
    "pci_hole64_size",
    "qemu_version",
)
SOURCES = ("dstack-mr", "observed", "imported")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_REGISTER = re.compile(r"^[0-9a-f]{96}$")
MAX_MEASUREMENTS = 256

ShapeValue = int | bool | str | None


def _shape_value(name: str, value: Any, where: str) -> ShapeValue:
    if value is None:
        return None
    if name == "qemu_version":
        if not isinstance(value, str):
            raise EvidenceMalformed(f"{where}.{name}", "expected a string")
        return value
    if name in ("hugepages", "pic", "qemu_single_pass_add_pages"):
        if not isinstance(value, bool):
            raise EvidenceMalformed(f"{where}.{name}", "expected true or false")
        return value
    # JSON numbers arrive as float through protobuf Struct: accept whole ones.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EvidenceMalformed(f"{where}.{name}", "expected a non-negative whole number")
    return value


def shape_of(doc: dict[str, Any], where: str = "vm_config") -> dict[str, ShapeValue]:
    """The measurement-relevant fields of a vm_config (absent ones are None)."""
    return {name: _shape_value(name, doc.get(name), where) for name in SHAPE_FIELDS}


def parse_vm_config(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvidenceMalformed("vm_config", f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise EvidenceMalformed("vm_config", "expected a JSON object")
    return doc


def _hex(value: Any, where: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise EvidenceMalformed(where, f"expected {what} as hex")
    text = value.strip().lower().removeprefix("0x")
    if not pattern.match(text):
        raise EvidenceMalformed(where, f"expected {what} as hex")
    return text


def image_hash(value: Any, where: str = "os_image_hash") -> str:
    return _hex(value, where, _HASH, "32 bytes")


@dataclass(frozen=True)
class Measurement:
    """MRTD and RTMR0-2 (lower-case hex) of an image booted in one VM shape."""

    vm_shape: dict[str, ShapeValue]
    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str

    @property
    def registers(self) -> tuple[str, str, str, str]:
        return (self.mrtd, self.rtmr0, self.rtmr1, self.rtmr2)

    def to_dict(self) -> dict[str, Any]:
        return {"vm_shape": dict(self.vm_shape)} | dict(zip(REGISTERS, self.registers, strict=True))


def measurement_from_dict(doc: Any, where: str) -> Measurement:
    if not isinstance(doc, dict):
        raise EvidenceMalformed(where, "expected an object")
    shape = doc.get("vm_shape", {})
    if not isinstance(shape, dict):
        raise EvidenceMalformed(f"{where}.vm_shape", "expected an object")
    regs = [_hex(doc.get(r), f"{where}.{r}", _REGISTER, "48 bytes") for r in REGISTERS]
    return Measurement(shape_of(shape, f"{where}.vm_shape"), regs[0], regs[1], regs[2], regs[3])


@dataclass(frozen=True)
class OsImageEntry:
    """Reference values of one dstack OS image."""

    os_image_hash: str
    version: str
    measurements: tuple[Measurement, ...]
    dev: bool = False
    source: str = "imported"
    source_detail: str = ""  # which evidence / file / tool run it came from
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return f"osImages/{self.os_image_hash}"

    def measurement_for(self, shape: dict[str, ShapeValue]) -> Measurement | None:
        for m in self.measurements:
            if m.vm_shape == shape:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "os_image_hash": self.os_image_hash,
            "version": self.version,
            "dev": self.dev,
            "source": self.source,
            "source_detail": self.source_detail,
            "recorded_at": self.recorded_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "measurements": [m.to_dict() for m in self.measurements],
        }


def _time(value: Any, where: str) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise EvidenceMalformed(where, "expected an ISO-8601 time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceMalformed(where, "expected an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def entry_from_dict(doc: Any, where: str = "os_image") -> OsImageEntry:
    """Our own entry format (what to_dict writes); raises EvidenceMalformed."""
    if not isinstance(doc, dict):
        raise EvidenceMalformed(where, "expected an object")
    version = doc.get("version", "")
    if not isinstance(version, str) or not version.strip():
        raise EvidenceMalformed(f"{where}.version", "is required (e.g. dstack-0.5.3)")
    source = doc.get("source", "imported")
    if source not in SOURCES:
        raise EvidenceMalformed(f"{where}.source", f"expected one of {', '.join(SOURCES)}")
    dev = doc.get("dev", False)
    if not isinstance(dev, bool):
        raise EvidenceMalformed(f"{where}.dev", "expected true or false")
    raw = doc.get("measurements")
    if not isinstance(raw, list) or not raw:
        raise EvidenceMalformed(f"{where}.measurements", "needs at least one measurement")
    if len(raw) > MAX_MEASUREMENTS:
        raise EvidenceMalformed(f"{where}.measurements", f"more than {MAX_MEASUREMENTS}")
    measurements = tuple(
        measurement_from_dict(m, f"{where}.measurements[{i}]") for i, m in enumerate(raw)
    )
    shapes = [json.dumps(m.vm_shape, sort_keys=True) for m in measurements]
    if len(set(shapes)) != len(shapes):
        raise EvidenceMalformed(f"{where}.measurements", "two measurements for one VM shape")
    detail = doc.get("source_detail", "")
    return OsImageEntry(
        os_image_hash=image_hash(doc.get("os_image_hash"), f"{where}.os_image_hash"),
        version=version.strip(),
        measurements=measurements,
        dev=dev,
        source=source,
        source_detail=detail if isinstance(detail, str) else "",
        recorded_at=_time(doc.get("recorded_at"), f"{where}.recorded_at"),
    )


def entry_from_dstack_mr(
    doc: Any,
    *,
    os_image_hash: str,
    version: str,
    vm_config: dict[str, Any],
    dev: bool = False,
    source: str = "dstack-mr",
    source_detail: str = "",
) -> OsImageEntry:
    """An entry from dstack-mr's `measure --json` output ({mrtd, rtmr0, rtmr1,
    rtmr2}) and the VM configuration it was measured for."""
    if not isinstance(doc, dict):
        raise EvidenceMalformed("dstack_mr", "expected dstack-mr's JSON object")
    measured = measurement_from_dict(doc | {"vm_shape": shape_of(vm_config)}, "dstack_mr")
    return OsImageEntry(
        os_image_hash=image_hash(os_image_hash),
        version=version,
        measurements=(measured,),
        dev=dev,
        source=source,
        source_detail=source_detail,
    )


def merge(existing: OsImageEntry | None, new: OsImageEntry) -> OsImageEntry:
    """`new`'s measurements added to `existing`'s (same image); a shape already
    measured keeps its first value, so a later import cannot overwrite it."""
    if existing is None:
        return new
    if existing.os_image_hash != new.os_image_hash:
        raise EvidenceMalformed("os_image_hash", "entries of different images cannot merge")
    known = {json.dumps(m.vm_shape, sort_keys=True) for m in existing.measurements}
    added = tuple(
        m for m in new.measurements if json.dumps(m.vm_shape, sort_keys=True) not in known
    )
    return OsImageEntry(
        os_image_hash=existing.os_image_hash,
        version=existing.version,
        measurements=existing.measurements + added,
        dev=existing.dev,
        source=existing.source,
        source_detail=existing.source_detail,
        recorded_at=existing.recorded_at,
    )


@dataclass(frozen=True)
class OsMatch:
    """The os check's answer: ok, the reason, and what was compared."""

    ok: bool
    reason: str
    details: dict[str, Any]


def match_os(
    entry: OsImageEntry | None,
    os_image_hash: str,
    shape: dict[str, ShapeValue],
    registers: dict[str, str],
    *,
    allow_dev: bool = False,
) -> OsMatch:
    """Pass only when the image is known, the shape was measured and all four
    registers equal the reference values."""
    details: dict[str, Any] = {"os_image_hash": os_image_hash, "vm_shape": dict(shape)}
    details.update(registers)
    if entry is None:
        return OsMatch(False, f"unknown OS image {os_image_hash}", details)
    details |= {"image_version": entry.version, "image_source": entry.source}
    if entry.dev and not allow_dev:
        return OsMatch(False, f"dev image: {entry.version} is a development OS image", details)
    measurement = entry.measurement_for(shape)
    if measurement is None:
        details["measured_shapes"] = [m.vm_shape for m in entry.measurements]
        return OsMatch(False, "no measurement for this VM shape", details)
    differ = [
        name
        for name, expected in zip(REGISTERS, measurement.registers, strict=True)
        if registers.get(name, "") != expected
    ]
    if differ:
        details["expected"] = dict(zip(REGISTERS, measurement.registers, strict=True))
        return OsMatch(
            False,
            f"{', '.join(r.upper() for r in differ)} differ from OS image {entry.version}'s "
            "reference values for this VM shape",
            details,
        )
    return OsMatch(
        True, f"MRTD and RTMR0-2 match OS image {entry.version} for this VM shape", details
    )
