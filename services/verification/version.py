"""Verifier version recorded in every report (ours and the dcap-qvl it used)."""

from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"

try:
    DCAP_QVL_VERSION = version("dcap-qvl")
except PackageNotFoundError:  # pragma: no cover - dcap-qvl is a hard dependency
    DCAP_QVL_VERSION = "unknown"

VERIFIER_VERSION = f"dstack-verifier {__version__} (dcap-qvl {DCAP_QVL_VERSION})"
