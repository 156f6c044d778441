"""Verification service: the TDX attestation verification engine (pure domain).

Public API for the service layer (server/main), the CLI and tests.
"""

from .collateral import CollateralBundle, CollateralCache, CollateralStore, LocalCollateralCache
from .engine import VerificationEngine
from .model import (
    CheckResult,
    CheckStatus,
    Evidence,
    Report,
    VerificationFlags,
    VerificationRequest,
)
from .pool import VerificationPool
from .report import SignedReport, load_or_create_signing_key, sign_report, verify_report_signature
from .report_store import LocalReportStore, ReportStore, S3ReportStore, StoredReport, report_key
from .settings import ReportStoreSettings, VerificationSettings

__all__ = [
    "CheckResult",
    "CheckStatus",
    "CollateralBundle",
    "CollateralCache",
    "CollateralStore",
    "Evidence",
    "LocalCollateralCache",
    "LocalReportStore",
    "Report",
    "ReportStore",
    "ReportStoreSettings",
    "S3ReportStore",
    "SignedReport",
    "StoredReport",
    "VerificationEngine",
    "VerificationFlags",
    "VerificationPool",
    "VerificationRequest",
    "VerificationSettings",
    "load_or_create_signing_key",
    "report_key",
    "sign_report",
    "verify_report_signature",
]
