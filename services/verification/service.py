"""The verification service's use cases, between the gRPC surface and the engine.

Verify: gather the evidence (inline, or fetched by app type), run the engine in
the process pool, sign the canonical report, store it under the task's key,
and return the summary with the report's location. GetReport reads it back.
No grpc here: server.py maps these types to and from the protos.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import metrics
from shared.errors import Unavailable

from .errors import EvidenceMalformed
from .fetchers import EvidenceFetcher
from .model import Report, VerificationRequest
from .pool import VerificationPool
from .report import key_id, public_key_bytes, public_key_pem, sign_report
from .report_store import ReportStore, StoredReport, report_key


class ReportStoreUnavailable(Unavailable):
    """The report store (S3 or the folder) failed; the caller may retry."""


def _describe(exc: Exception) -> str:
    """The store's own error code and message, so an operator sees why (botocore
    keeps them in `response`; the exception's str() can be long and nested)."""
    error = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    if error:
        return f"{type(exc).__name__} {error.get('Code', '')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class StoredVerification:
    """A verification's report, as signed and stored."""

    report: Report
    bucket: str
    key: str
    filename: str
    report_sha256: str


@dataclass(frozen=True)
class SigningKeyInfo:
    public_key: bytes
    public_key_pem: str
    key_id: str


class VerificationService:
    def __init__(
        self,
        pool: VerificationPool,
        store: ReportStore,
        signing_key: Ed25519PrivateKey,
        fetcher: EvidenceFetcher | None,
        bucket: str = "",
    ) -> None:
        self.pool = pool
        self.store = store
        self.signing_key = signing_key
        self.fetcher = fetcher
        self.bucket = bucket
        raw = public_key_bytes(signing_key)
        self.key_info = SigningKeyInfo(
            public_key=raw,
            public_key_pem=public_key_pem(signing_key).decode("ascii"),
            key_id=key_id(raw),
        )

    async def verify(self, request: VerificationRequest) -> StoredVerification:
        if not request.task_id:
            raise EvidenceMalformed("task_id", "is required")
        began = time.perf_counter()
        if not request.evidence.quote:
            if self.fetcher is None:
                raise EvidenceMalformed("evidence", "no inline evidence and fetching is off")
            evidence = await self.fetcher.fetch(request)
            request = replace(request, evidence=evidence)
        report = await self.pool.verify(request)
        signed = sign_report(report, self.signing_key)
        key = report_key(request.task_id)
        try:
            # boto3 is blocking: keep it off the event loop.
            await asyncio.to_thread(self.store.put, key, signed.body, signed.signature)
        except Exception as exc:
            raise ReportStoreUnavailable(f"storing the report failed: {_describe(exc)}") from exc
        metrics.verification_done(
            [(c.name, c.status.value) for c in report.checks], time.perf_counter() - began
        )
        return StoredVerification(
            report=report,
            bucket=self.bucket,
            key=key,
            filename=Path(key).name,
            report_sha256=hashlib.sha256(signed.body).hexdigest(),
        )

    async def get_report(self, task_id: str) -> StoredReport:
        if not task_id:
            raise EvidenceMalformed("task_id", "is required")
        key = report_key(task_id)
        return await asyncio.to_thread(self.store.get, key)

    async def close(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.aclose()
        await asyncio.to_thread(self.pool.shutdown)
