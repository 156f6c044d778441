"""Collateral windows and the collateral store (local folder, cache, PCCS)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.verification.collateral import (
    CollateralStore,
    LocalCollateralCache,
    QuoteCollateralKey,
    parse_collateral,
)
from services.verification.engine import VerificationEngine
from services.verification.errors import CollateralExpired, CollateralUnavailable
from services.verification.model import CheckStatus

from .support import AT_90C06F, AT_TDX, DCAP, quote_report_evidence, quote_report_request


def test_window_is_the_intersection_of_every_dated_part() -> None:
    bundle = parse_collateral((DCAP / "tdx_quote.collateral.json").read_text())
    assert bundle.window == "2025-06-19T10:32:27Z .. 2025-07-19T10:00:35Z"
    assert (bundle.tee, bundle.fmspc, bundle.ca) == ("TDX", "B0C06F000000", "platform")
    assert bundle.covers(AT_TDX)
    assert not bundle.covers(datetime(2025, 7, 19, 11, tzinfo=UTC))


def test_sgx_collateral_is_indexed_as_sgx() -> None:
    bundle = parse_collateral((DCAP / "sgx_quote.collateral.json").read_text())
    assert (bundle.tee, bundle.fmspc) == ("SGX", "00A067110000")


def _local_store(tmp_path: Path) -> CollateralStore:
    for name in ("collateral_fmspc_90C06F.json", "tdx_quote.collateral.json"):
        shutil.copy(DCAP / name, tmp_path / name)
    (tmp_path / "notes.json").write_text("{}")  # not a bundle: ignored
    return CollateralStore(local_dir=tmp_path)


def test_local_directory_finds_bundle_for_fmspc_and_time(tmp_path: Path) -> None:
    store = _local_store(tmp_path)
    key = QuoteCollateralKey.of_quote(quote_report_evidence().quote)
    assert key == QuoteCollateralKey("TDX", "90C06F000000", "platform")
    found = store.find(key, AT_90C06F)
    assert found is not None and found.fmspc == "90C06F000000"


def test_local_directory_refuses_bundle_outside_its_window(tmp_path: Path) -> None:
    store = _local_store(tmp_path)
    key = QuoteCollateralKey.of_quote(quote_report_evidence().quote)
    with pytest.raises(CollateralExpired, match="not at 2026-04-01T00:00:00Z"):
        store.find(key, datetime(2026, 4, 1, tzinfo=UTC))


def test_engine_uses_the_store_when_evidence_has_no_collateral(tmp_path: Path) -> None:
    engine = VerificationEngine(collateral_store=_local_store(tmp_path))
    evidence = quote_report_evidence(collateral=None)
    report = engine.verify(quote_report_request(evidence=evidence))
    assert report.check("hardware").status is CheckStatus.PASSED
    assert report.passed


def test_engine_without_collateral_fails_hardware_saying_so(tmp_path: Path) -> None:
    engine = VerificationEngine(collateral_store=CollateralStore(local_dir=tmp_path))
    report = engine.verify(quote_report_request(evidence=quote_report_evidence(collateral=None)))
    hardware = report.check("hardware")
    assert hardware.status is CheckStatus.FAILED
    assert "no collateral for FMSPC 90C06F000000 (platform)" in hardware.reason


class FakePccs:
    def __init__(self, answer: str | Exception) -> None:
        self.answer = answer
        self.calls = 0

    async def fetch(self, quote: bytes) -> str:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_pccs_fetch_is_cached_with_its_window(tmp_path: Path) -> None:
    pccs = FakePccs((DCAP / "collateral_fmspc_90C06F.json").read_text())
    cache = LocalCollateralCache(tmp_path / "cache")
    store = CollateralStore(cache=cache, pccs=pccs)
    quote = quote_report_evidence().quote
    first = await store.resolve(quote, AT_90C06F)
    again = await CollateralStore(cache=cache, pccs=pccs).resolve(quote, AT_90C06F)
    assert pccs.calls == 1
    assert first.json_text == again.json_text
    assert cache.get("collateral/tdx-90c06f000000-platform/index.json") is not None


async def test_pccs_collateral_outside_window_is_refused(tmp_path: Path) -> None:
    pccs = FakePccs((DCAP / "collateral_fmspc_90C06F.json").read_text())
    store = CollateralStore(pccs=pccs)
    with pytest.raises(CollateralExpired):
        await store.resolve(quote_report_evidence().quote, datetime(2027, 1, 1, tzinfo=UTC))


async def test_pccs_failure_is_unavailable() -> None:
    store = CollateralStore(pccs=FakePccs(CollateralUnavailable("PCCS fetch failed: timeout")))
    with pytest.raises(CollateralUnavailable):
        await store.resolve(quote_report_evidence().quote, AT_90C06F)


async def test_no_source_at_all_is_unavailable() -> None:
    with pytest.raises(CollateralUnavailable, match="no PCCS configured"):
        await CollateralStore().resolve(quote_report_evidence().quote, AT_90C06F)


def test_cache_refuses_path_traversal(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalCollateralCache(tmp_path).put("../escape", b"x")
