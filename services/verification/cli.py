"""`python -m services.verification verify ...`: verify evidence, print the report JSON.

Exit codes: 0 the report passed, 1 it failed, 2 anything else (bad arguments,
unreadable files, malformed evidence), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from .chain import ChainEvidence
from .collateral import CollateralStore
from .engine import VerificationEngine
from .errors import VerificationError
from .evidence import MAX_DOCUMENT_BYTES, parse_evidence_json
from .hexutil import normalize_hex
from .model import CHECK_ORDER, Evidence, VerificationFlags, VerificationRequest
from .os_image_store import OsImageCatalog, load_entry_files
from .phala_cloud import parse_system_info
from .settings import VerificationSettings

EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2 too; keep its usage line and make the message ours.
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m services.verification")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify evidence and print the report JSON")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--evidence", type=Path, help="GetQuote JSON file (one quote)")
    source.add_argument(
        "--phala-cloud-response",
        type=Path,
        help="a saved Phala Cloud attestations response: the app's whole trust chain",
    )
    verify.add_argument(
        "--collateral",
        type=Path,
        action="append",
        default=[],
        help="collateral JSON (dcap-qvl shape), or a folder of them (repeatable); "
        "each quote gets the bundle of its FMSPC",
    )
    verify.add_argument("--at", help="evaluation time, ISO-8601 (default: now)")
    verify.add_argument(
        "--flags", help=f"comma-separated checks to run (of {','.join(CHECK_ORDER)})"
    )
    verify.add_argument("--app-compose", type=Path, help="raw app-compose.json file")
    verify.add_argument("--compose-hash", help="expected compose hash (hex)")
    verify.add_argument("--app-id", default="", help="expected app id (hex)")
    verify.add_argument("--domain", default="", help="app domain, for certificate/DNS checks")
    verify.add_argument(
        "--os-allowlist",
        type=Path,
        action="append",
        default=[],
        help="extra OS allowlist file (repeatable)",
    )
    verify.add_argument(
        "--allow-tcb-status",
        action="append",
        default=[],
        help="TCB status to accept besides UpToDate (repeatable)",
    )
    verify.add_argument(
        "--kms-ca-pubkey",
        action="append",
        default=[],
        metavar="HEX",
        help="KMS CA public key (SubjectPublicKeyInfo DER, hex) to trust (repeatable)",
    )
    return parser


def _parse_time(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at is not an ISO-8601 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None


def _collateral_store(paths: list[Path]) -> CollateralStore:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.glob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"cannot read collateral {path}: no such file or folder")
    return CollateralStore(files=tuple(files))


def _chain(path: Path, app_id: str) -> tuple[ChainEvidence, str]:
    text = _read(path, "Phala Cloud response")
    if len(text) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    # Verified as a fetch for this app id would be: the task's, else the one the
    # response was saved for.
    app_id = normalize_hex(app_id or str(doc.get("app_id", "") if isinstance(doc, dict) else ""))
    return parse_system_info(doc, app_id), app_id


def build_request(args: argparse.Namespace) -> VerificationRequest:
    chain: ChainEvidence | None = None
    app_id = args.app_id
    if args.phala_cloud_response:
        chain, app_id = _chain(args.phala_cloud_response, args.app_id)
        evidence = chain.instances[0].evidence if chain.instances else Evidence(quote=b"")
    else:
        evidence = parse_evidence_json(_read(args.evidence, "evidence"))
    if args.app_compose:
        # Raw text, exactly as delivered: the compose hash is over these bytes.
        evidence = replace(evidence, app_compose=args.app_compose.read_bytes().decode("utf-8"))
    flags = (
        VerificationFlags.only([f.strip() for f in args.flags.split(",") if f.strip()])
        if args.flags
        else VerificationFlags()
    )
    return VerificationRequest(
        evidence=evidence,
        evaluated_at=_parse_time(args.at),
        task_id="cli",
        app_id=app_id,
        app_config_type="phala_cloud" if chain is not None else "",
        model_or_domain=args.domain,
        flags=flags,
        expected_compose_hash=args.compose_hash or "",
        chain=chain,
        trusted_kms_ca_pubkeys=tuple(args.kms_ca_pubkey),
    )


def run_verify(args: argparse.Namespace) -> int:
    request = build_request(args)
    defaults = VerificationSettings()
    settings = replace(
        defaults,
        allowed_tcb_statuses=defaults.allowed_tcb_statuses + tuple(args.allow_tcb_status),
    )
    # The CLI reads OS image entries from files only, never a service's store.
    os_catalog = OsImageCatalog(
        load_entry_files(defaults.os_allowlist_paths + tuple(args.os_allowlist)),
        None,
        defaults.os_images_cache_seconds,
    )
    engine = VerificationEngine(
        settings, collateral_store=_collateral_store(args.collateral), os_catalog=os_catalog
    )
    report = engine.verify(request)
    json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return EXIT_PASSED if report.passed else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            return run_verify(args)
    except (VerificationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR  # pragma: no cover - argparse rejects unknown commands
