"""Signing a report and writing it once, in the pool process that verified it.

The report's canonical JSON, its Ed25519 signature and the write-once PUT (or
the folder's exclusive create) cost the verification service's single main
process more CPU than the quote itself, and the PUT a thread hop per report.
Done where the report is made, the main process gets back only what the
summary names (WrittenReport): the report key, its digest, the verdict and
checks, and whether the report was found stored rather than written.

Each pool process has one ReportWriter, signing with the key the service
publishes (handed over by the parent, never loaded here) and making its own
store client on first use, so a store that is down fails the writes, not the
process. Blocking: it runs in a pool process, not on an event loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ReportNotFound, ReportStoreUnavailable
from .model import Report
from .report import SignedReport, sign_report
from .report_store import ReportExists, ReportStore, build_report_store
from .settings import ReportStoreSettings

# The signed report's fields a ReportSummary names (mapping.summary_to_proto).
SUMMARY_FIELDS = (
    "task_id",
    "verdict",
    "checks",
    "part_checks",
    "tcb_status",
    "advisory_ids",
    "evaluated_at",
    "verifier_version",
    "signing_key_id",
)


@dataclass(frozen=True)
class WriteTarget:
    """Where a verified report goes: its key and the attempt it is signed for."""

    key: str
    attempt: int


@dataclass(frozen=True)
class WrittenReport:
    """A report as stored (written now, or found stored), reduced to its summary."""

    key: str
    attempt: int
    summary: dict[str, Any]  # SUMMARY_FIELDS of the signed report
    report_sha256: str
    already_stored: bool
    # The verification's own seconds; 0 for a report found stored (not a new run).
    seconds: float = 0.0


def written(
    body: bytes,
    document: dict[str, Any],
    target: WriteTarget,
    already_stored: bool,
    seconds: float = 0.0,
) -> WrittenReport:
    """The summary of the signed report `body` (`document` parsed)."""
    return WrittenReport(
        key=target.key,
        attempt=target.attempt,
        summary={name: document[name] for name in SUMMARY_FIELDS if name in document},
        report_sha256=hashlib.sha256(body).hexdigest(),
        already_stored=already_stored,
        seconds=seconds,
    )


class ReportWriter:
    def __init__(self, settings: ReportStoreSettings, signing_key: Ed25519PrivateKey) -> None:
        self.settings = settings
        self.signing_key = signing_key
        self._store: ReportStore | None = None

    def _the_store(self) -> ReportStore:
        if self._store is None:
            self._store = build_report_store(self.settings)
        return self._store

    def write(self, report: Report, target: WriteTarget) -> WrittenReport:
        """Sign the report for the target's attempt and store it once; a
        report already stored there (a repeat of the attempt) is the answer
        instead. Raises ReportStoreUnavailable when the store fails."""
        (result,) = self.write_many([(report, target)])
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(
        self, items: list[tuple[Report, WriteTarget]]
    ) -> list[WrittenReport | Exception]:
        """write() of each, the batch stored at once (ReportStore.create_many);
        each item's result or fault, one's fault never another's."""
        signed: list[SignedReport | Exception] = []
        for report, target in items:
            try:
                signed.append(sign_report(report, self.signing_key, target.attempt))
            except Exception as exc:  # a report that cannot be signed is its own fault
                signed.append(exc)
        ready = [
            (target.key, one.body, one.signature)
            for (_, target), one in zip(items, signed, strict=True)
            if isinstance(one, SignedReport)
        ]
        try:
            store = self._the_store()
            faults = iter(store.create_many(ready))
        except Exception as exc:  # the store's client, or its write-once probe
            failed = ReportStoreUnavailable.of("storing the report", exc)
            return [one if isinstance(one, Exception) else failed for one in signed]
        return [
            one
            if isinstance(one, Exception)
            else self._result(store, report, target, one, next(faults))
            for (report, target), one in zip(items, signed, strict=True)
        ]

    def _result(
        self,
        store: ReportStore,
        report: Report,
        target: WriteTarget,
        signed: SignedReport,
        fault: Exception | None,
    ) -> WrittenReport | Exception:
        if fault is None:
            seconds = report.timings_ms.get("total", 0.0) / 1000
            return written(signed.body, signed.document, target, False, seconds)
        if isinstance(fault, ReportExists):
            # A repeat of this attempt (a redelivered job, a retried call): the
            # first report stands, and its summary is the answer.
            return self._existing(store, target)
        return ReportStoreUnavailable.of("storing the report", fault)

    @staticmethod
    def _existing(store: ReportStore, target: WriteTarget) -> WrittenReport | Exception:
        try:
            existing = store.get(target.key)
        except ReportNotFound as exc:
            return exc
        except Exception as exc:
            return ReportStoreUnavailable.of("reading the report", exc)
        return written(existing.body, json.loads(existing.body), target, True)
