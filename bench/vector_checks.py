"""How many of ../shared/vectors' attestations pass each default check.

Each attestation is verified with the default flags at a time inside its
collateral's window (vectors/README.md), as a task would carry it: the quote,
and whatever the vector has besides (event log, vm_config). Prints one line
per attestation and the count of passes per check.

    .venv/bin/python bench/vector_checks.py
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.verification.engine import VerificationEngine  # noqa: E402
from services.verification.evidence import parse_evidence_json  # noqa: E402
from services.verification.model import Evidence, VerificationFlags, VerificationRequest  # noqa: E402
from services.verification.ratls import embedded_attestation, load_chain  # noqa: E402

VECTORS = Path(os.environ.get("VECTORS_DIR", ROOT.parent / "shared" / "vectors"))
DCAP, DSTACK = VECTORS / "dcap-qvl", VECTORS / "dstack"
AT_TDX = datetime(2025, 7, 4, 10, 16, 31, tzinfo=UTC)
AT_SGX = datetime(2025, 7, 4, 10, 28, 44, tzinfo=UTC)
AT_90C06F = datetime(2026, 3, 5, 10, 50, 3, tzinfo=UTC)
# The compose hash a user of the quote-report.json app would expect (its event's payload).
COMPOSE_HASH = "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7"


def _dstack(name: str) -> Evidence:
    return parse_evidence_json((DSTACK / name).read_text())


def _ratls_evidence(path: Path) -> Evidence:
    """An RA-TLS chain's leaf as a task's evidence: its own quote and event log
    (extensions 1.3.6.1.4.1.62397.1.1/.1.2) and the chain."""
    pem = path.read_text()
    embedded = embedded_attestation(load_chain(pem)[0])
    if embedded is None:
        raise SystemExit(f"{path}: its leaf carries no RA-TLS quote")
    return Evidence(quote=embedded.quote, event_log=embedded.event_log, certificate_chain=pem)


def attestations() -> list[tuple[str, Evidence, str, datetime, str]]:
    c_b0 = (DCAP / "tdx_quote.collateral.json").read_text()
    c_90 = (DCAP / "collateral_fmspc_90C06F.json").read_text()
    c_sgx = (DCAP / "sgx_quote.collateral.json").read_text()
    hex_quote = bytes.fromhex(
        (DCAP / "tdx_quote_no_tcb_match.hex").read_text().strip().removeprefix("0x")
    )
    return [
        (
            "dcap-qvl/tdx_quote.bin",
            Evidence((DCAP / "tdx_quote.bin").read_bytes()),
            c_b0,
            AT_TDX,
            "",
        ),
        (
            "dcap-qvl/tdx_quote_v5.bin",
            Evidence((DCAP / "tdx_quote_v5.bin").read_bytes()),
            c_90,
            AT_90C06F,
            "",
        ),
        ("dcap-qvl/tdx_quote_no_tcb_match.hex", Evidence(hex_quote), c_b0, AT_TDX, ""),
        (
            "dcap-qvl/sgx_quote.bin",
            Evidence((DCAP / "sgx_quote.bin").read_bytes()),
            c_sgx,
            AT_SGX,
            "",
        ),
        ("dstack/quote-report.json", _dstack("quote-report.json"), c_90, AT_90C06F, COMPOSE_HASH),
        ("dstack/tdx-lite-getquote.json", _dstack("tdx-lite-getquote.json"), c_90, AT_90C06F, ""),
    ] + (
        # Not vendored: a real dstack RA-TLS chain (RATLS_CHAIN=file, see
        # tests/unit/verification/real_ratls.py).
        [
            (
                "RA-TLS chain " + Path(os.environ["RATLS_CHAIN"]).name,
                _ratls_evidence(Path(os.environ["RATLS_CHAIN"])),
                c_90,
                AT_90C06F,
                "",
            )
        ]
        if os.environ.get("RATLS_CHAIN")
        else []
    )


def main() -> None:
    engine = VerificationEngine()
    flags = VerificationFlags()
    enabled = flags.enabled()
    passes: Counter[str] = Counter()
    total = 0
    for name, evidence, collateral, at, compose in attestations():
        request = VerificationRequest(
            evidence=Evidence(**{**evidence.__dict__, "collateral": collateral}),
            evaluated_at=at,
            task_id="vectors",
            flags=flags,
            expected_compose_hash=compose,
        )
        try:
            report = engine.verify(request)
        except Exception as exc:  # malformed evidence is a result here, not a crash
            print(f"{name:40s} rejected: {exc}")
            total += 1
            continue
        total += 1
        cells = []
        for check in enabled:
            result = report.check(check)
            passes[check] += result.passed
            cells.append(f"{check}={result.status.value}")
        print(f"{name:40s} {' '.join(cells)}")
        for check in enabled:
            result = report.check(check)
            if not result.passed:
                print(f"    {check}: {result.reason[:150]}")
    print(json.dumps({"attestations": total, "passed": {c: passes[c] for c in enabled}}))


if __name__ == "__main__":
    main()
