"""The process pool and the command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.verification.cli import main
from services.verification.pool import VerificationPool
from services.verification.settings import VerificationSettings

from .support import APP_ID, COMPOSE_HASH, DCAP, DSTACK, quote_report_request

ROOT = Path(__file__).resolve().parents[3]
EVIDENCE = str(DSTACK / "quote-report.json")
COLLATERAL = str(DCAP / "collateral_fmspc_90C06F.json")
AT = "2026-03-05T10:50:03Z"


async def test_pool_verifies_in_worker_processes() -> None:
    pool = VerificationPool(VerificationSettings(), max_workers=2)
    try:
        pool.warm_up()
        reports = await asyncio.gather(*(pool.verify(quote_report_request()) for _ in range(4)))
    finally:
        pool.shutdown()
    assert all(r.passed for r in reports)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_passed_report_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(
        capsys,
        *("--evidence", EVIDENCE, "--collateral", COLLATERAL, "--at", AT),
        *("--flags", "hardware,os,source_code", "--compose-hash", COMPOSE_HASH),
        *("--app-id", APP_ID),
    )
    assert code == 0
    assert json.loads(out)["verdict"] == "passed"


def test_cli_failed_report_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    compose = tmp_path / "app-compose.json"
    compose.write_text('{"name": "other"}')
    code, out, _ = _cli(
        capsys,
        *("--evidence", EVIDENCE, "--collateral", COLLATERAL, "--at", AT),
        *("--flags", "hardware,source_code", "--app-compose", str(compose)),
    )
    assert code == 1
    assert json.loads(out)["verdict"] == "failed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evidence", "/nonexistent.json"], "cannot read evidence"),
        (["--evidence", COLLATERAL], "quote: missing"),
        (["--evidence", EVIDENCE, "--at", "yesterday"], "--at is not an ISO-8601 time"),
        (["--evidence", EVIDENCE, "--flags", "hardware,magic"], "unknown check(s): magic"),
        (["--evidence", EVIDENCE, "--compose-hash", "abc"], "odd length"),
    ],
)
def test_cli_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _cli(capsys, *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_python_m_entry_point_runs_verify(tmp_path: Path) -> None:
    truncated = tmp_path / "evidence.json"
    doc = json.loads(Path(EVIDENCE).read_text())
    doc["quote"] = doc["quote"][:200]
    truncated.write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "services.verification", "verify", "--evidence", str(truncated)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: quote: truncated")


async def test_pool_batch_keeps_each_requests_own_outcome() -> None:
    from dataclasses import replace

    from services.verification.errors import EvidenceMalformed

    good = quote_report_request()
    bad = replace(good, evidence=replace(good.evidence, quote=good.evidence.quote[:100]))
    pool = VerificationPool(VerificationSettings(), max_workers=1, max_batch=8)
    try:
        results = await asyncio.gather(
            *(pool.verify(r) for r in [good, bad, good, good, bad]), return_exceptions=True
        )
    finally:
        pool.shutdown()
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Report", "EvidenceMalformed", "Report", "Report", "EvidenceMalformed"]
    error = results[1]
    assert isinstance(error, EvidenceMalformed) and error.field == "quote"


def test_domain_errors_survive_pickling() -> None:
    import pickle

    from services.verification.errors import CollateralExpired, EvidenceMalformed

    for error in (EvidenceMalformed("quote", "truncated"), CollateralExpired("old", field="x")):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.field, again.message, str(again)) == (
            type(error),
            error.field,
            error.message,
            str(error),
        )
