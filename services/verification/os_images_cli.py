"""`python -m services.verification os-images ...`: the OS image entries of
the verification service's store (the folder or bucket its configuration
names: DATA_DIR, or S3_ENDPOINT/S3_BUCKET).

    os-images list
    os-images import FILE [--os-image-hash H --version V --vm-config F]
    os-images add --from-evidence FILE [--collateral C --at T --version V]
    os-images measure IMAGE_DIR --vm-config FILE [--dstack-mr PATH]

Exit codes: 0 done, 2 anything else, with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import add_config_arguments, settings_from_args

from .errors import EvidenceMalformed, VerificationError
from .identity import IdentityProblem, attested_identity
from .os_image_store import OsImageStore, build_os_image_store, load_entry_files
from .os_images import (
    OsImageEntry,
    entry_from_dict,
    entry_from_dstack_mr,
    image_hash,
    merge,
    parse_vm_config,
)
from .settings import VerificationSettings

EXIT_OK, EXIT_ERROR = 0, 2
DSTACK_MR_ENV = "DSTACK_MR_BIN"
MEASURE_TIMEOUT_SECONDS = 600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.verification os-images")
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="print every entry (stored and read-only) as JSON")
    imp = sub.add_parser("import", help="import our entry format or dstack-mr's --json output")
    imp.add_argument("file", type=Path)
    imp.add_argument("--os-image-hash", help="for dstack-mr output: the image it measured")
    imp.add_argument("--version", help="for dstack-mr output: e.g. dstack-0.5.3")
    imp.add_argument("--vm-config", type=Path, help="for dstack-mr output: the VM shape")
    imp.add_argument("--dev", action="store_true", help="a development image")
    add = sub.add_parser("add", help="record what a trusted deployment measured")
    add.add_argument("--from-evidence", type=Path, required=True, help="GetQuote JSON file")
    add.add_argument("--collateral", type=Path, help="collateral JSON (dcap-qvl shape)")
    add.add_argument("--at", help="evaluation time, ISO-8601 (default: now)")
    add.add_argument("--version", default="", help="the image's version, e.g. dstack-0.5.3")
    add.add_argument("--dev", action="store_true", help="a development image")
    measure = sub.add_parser("measure", help="run dstack-mr on an image and record the result")
    measure.add_argument("image_dir", type=Path, help="the image folder (with metadata.json)")
    measure.add_argument("--vm-config", type=Path, required=True)
    measure.add_argument("--version", default="", help="default: metadata.json's version")
    measure.add_argument("--dev", action="store_true", help="a development image")
    measure.add_argument("--dstack-mr", help=f"the dstack-mr binary (or ${DSTACK_MR_ENV})")
    return parser


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None


def _record(store: OsImageStore, entry: OsImageEntry) -> OsImageEntry:
    """Add `entry`'s measurements to the stored entry of its image (or create it)."""
    merged = merge(store.get(entry.os_image_hash), entry)
    store.replace(merged)
    return merged


def _print(entry: OsImageEntry, **extra: Any) -> None:
    print(json.dumps(entry.to_dict() | extra, sort_keys=True))


def run_import(args: argparse.Namespace, store: OsImageStore) -> int:
    doc = _json(args.file, "file")
    if isinstance(doc, dict) and "mrtd" in doc and "measurements" not in doc:
        if not (args.os_image_hash and args.version and args.vm_config):
            raise ValueError("dstack-mr output needs --os-image-hash, --version and --vm-config")
        vm_config = _json(args.vm_config, "vm_config")
        entry = entry_from_dstack_mr(
            doc,
            os_image_hash=args.os_image_hash,
            version=args.version,
            vm_config=vm_config if isinstance(vm_config, dict) else {},
            dev=args.dev,
            source_detail=f"dstack-mr output {args.file.name} for vm_config {args.vm_config.name}",
        )
        entries: tuple[OsImageEntry, ...] = (entry,)
    elif isinstance(doc, dict) and "images" in doc:
        entries = load_entry_files([args.file])
    else:
        entries = (entry_from_dict(doc, str(args.file)),)
    for entry in entries:
        _print(_record(store, entry))
    return EXIT_OK


def _time(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def run_add(args: argparse.Namespace, store: OsImageStore) -> int:
    from .engine import VerificationEngine
    from .evidence import parse_evidence_json
    from .model import VerificationFlags, VerificationRequest

    evidence = parse_evidence_json(args.from_evidence.read_text("utf-8"))
    if args.collateral:
        evidence = replace(evidence, collateral=args.collateral.read_text("utf-8"))
    at = _time(args.at)
    report = VerificationEngine().verify(
        VerificationRequest(
            evidence=evidence,
            evaluated_at=at,
            task_id="os-images-add",
            flags=VerificationFlags.only(["hardware"]),
        )
    )
    quote = report.quote
    if not quote.get("verified"):
        raise ValueError(f"the quote does not verify: {report.check('hardware').reason}")
    fields = quote["fields"]
    vm_config = parse_vm_config(evidence.vm_config)
    os_hash = vm_config.get("os_image_hash", "")
    if evidence.event_log:
        from .eventlog import parse_event_log

        identity = attested_identity(
            parse_event_log(evidence.event_log), bytes.fromhex(fields["rt_mr3"])
        )
        os_hash = identity.get("os-image-hash") or os_hash
    if not os_hash:
        raise ValueError("neither the event log nor vm_config names an os_image_hash")
    quote_sha = hashlib.sha256(evidence.quote).hexdigest()
    entry = entry_from_dict(
        {
            "os_image_hash": image_hash(os_hash),
            "version": args.version or f"unknown (observed {image_hash(os_hash)[:16]})",
            "dev": args.dev,
            "source": "observed",
            "source_detail": (
                f"observed in {args.from_evidence.name} (quote sha256 {quote_sha}), verified "
                f"at {at.isoformat()} with TCB status {report.tcb_status}"
            ),
            "measurements": [
                {
                    "vm_shape": vm_config,
                    "mrtd": fields["mr_td"],
                    "rtmr0": fields["rt_mr0"],
                    "rtmr1": fields["rt_mr1"],
                    "rtmr2": fields["rt_mr2"],
                }
            ],
        }
    )
    _print(_record(store, entry))
    return EXIT_OK


def dstack_mr_arguments(vm_config: dict[str, Any], metadata: Path) -> list[str]:
    """`dstack-mr measure --json` options for a vm_config's shape."""
    args = ["measure", "--json"]
    options = {
        "cpu_count": "--cpu",
        "memory_size": "--memory",
        "num_gpus": "--num-gpus",
        "num_nvswitches": "--num-nvswitches",
        "pci_hole64_size": "--pci-hole64-size",
        "qemu_version": "--qemu-version",
    }
    for name, flag in options.items():
        if vm_config.get(name) is not None:
            args += [flag, str(vm_config[name])]
    if vm_config.get("hugepages"):
        args.append("--hugepages")
    for name, flag in (("pic", "--pic"), ("hotplug_off", "--hotplug-off")):
        if vm_config.get(name) is not None:
            args += [flag, str(bool(vm_config[name])).lower()]
    if vm_config.get("qemu_single_pass_add_pages") is not None:
        two_pass = not vm_config["qemu_single_pass_add_pages"]
        args += ["--two-pass-add-pages", str(two_pass).lower()]
    return [*args, str(metadata)]


def run_measure(args: argparse.Namespace, store: OsImageStore) -> int:
    binary = args.dstack_mr or os.environ.get(DSTACK_MR_ENV, "")
    if not binary:
        binary = shutil.which("dstack-mr") or shutil.which("dstack-mr-cli") or ""
    if not binary:
        raise ValueError(f"no dstack-mr binary configured (--dstack-mr or ${DSTACK_MR_ENV})")
    metadata = args.image_dir / "metadata.json"
    info = _json(metadata, "image metadata")
    vm_config = _json(args.vm_config, "vm_config")
    if not isinstance(vm_config, dict) or not vm_config.get("os_image_hash"):
        raise ValueError("the vm_config must name the image's os_image_hash")
    done = subprocess.run(
        [binary, *dstack_mr_arguments(vm_config, metadata)],
        capture_output=True,
        text=True,
        timeout=MEASURE_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"dstack-mr failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    entry = entry_from_dstack_mr(
        json.loads(done.stdout),
        os_image_hash=vm_config["os_image_hash"],
        version=args.version or str(info.get("version", "")) or "unknown",
        vm_config=vm_config,
        dev=args.dev,
        source_detail=f"{Path(binary).name} measure on {args.image_dir.name}",
    )
    _print(_record(store, entry))
    return EXIT_OK


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    engine_settings = settings_from_args(VerificationSettings, args)
    store = build_os_image_store(engine_settings.report_store)
    try:
        if args.action == "list":
            stored = {e.os_image_hash: e for e in store.list()}
            for entry in load_entry_files(engine_settings.os_allowlist_paths):
                if entry.os_image_hash not in stored:
                    _print(entry, read_only=True)
            for entry in stored.values():
                _print(entry, read_only=False)
            return EXIT_OK
        runner = {"import": run_import, "add": run_add, "measure": run_measure}[args.action]
        return runner(args, store)
    except (VerificationError, EvidenceMalformed, IdentityProblem, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except subprocess.TimeoutExpired:
        print("error: dstack-mr did not finish in time", file=sys.stderr)
        return EXIT_ERROR
