"""The verification service's use cases, between the gRPC surface and the engine.

verify / verify_tasks: gather the evidence (inline, or fetched by app type),
run the engine in the process pool, whose processes sign the canonical report
and write it once under the task and attempt (report_writer.py); this process
gets back the summary's fields and counts the metrics. A report already
stored for that attempt is returned as it is, never overwritten. A
redelivered task whose earlier attempt of the same run stored a report that
checks adopts it instead of being verified again (adoption.py). get_report reads one back.
No grpc here: server.py and mapping.py map these types to and from the protos,
and task_inputs.py reads a batch's inputs from the tasks service.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import metrics
from shared.errors import DomainError, FailedPrecondition, Unavailable
from shared.ids import canonical_task_id
from shared.log import get_logger

from . import adoption
from .chain import with_fetched
from .errors import EvidenceMalformed, ReportNotFound, ReportStoreUnavailable
from .fetchers import EvidenceFetcher
from .model import VerificationRequest
from .pool import VerificationPool
from .report import key_id, public_key_bytes, public_key_pem
from .report_store import (
    ReportStore,
    ReportUnreadable,
    StoredReport,
    check_task_id,
    report_key,
)
from .report_writer import WriteTarget, WrittenReport, written

log = get_logger(__name__)

# DeleteReports: tasks whose reports are deleted at once (each a listing and a
# DeleteObjects on S3).
DELETE_CONCURRENCY = 8


class TaskInputsUnavailable(Unavailable):
    """The tasks service could not give a task's inputs now; retry later."""


class StaleAttempt(FailedPrecondition):
    """The attempt is not the task's current one (or the task is gone): no report."""


@dataclass(frozen=True)
class TaskLease:
    """One attempt of one task, as StartTasks returned it."""

    task_id: str
    attempt: int


@dataclass(frozen=True)
class TaskInput:
    """What the tasks service answered for one lease: the request, or why not."""

    lease: TaskLease
    request: VerificationRequest | None = None
    error: DomainError | None = None
    # The earlier attempts of the task's current run (their reports may be adopted).
    earlier_attempts: tuple[int, ...] = ()


class TaskInputSource(abc.ABC):
    """Where a batch's inputs come from (the tasks service's GetTaskInputs)."""

    @abc.abstractmethod
    async def get(self, leases: Sequence[TaskLease]) -> list[TaskInput]:
        """One TaskInput per lease, in order; never raises for one item's fault."""


@dataclass(frozen=True)
class StoredVerification:
    """A verification's report, as signed and stored (new, or found stored)."""

    summary: dict[str, Any]  # the signed report's fields a summary names (SUMMARY_FIELDS)
    task_id: str
    attempt: int
    bucket: str
    key: str
    filename: str
    report_sha256: str
    already_stored: bool = False
    # The earlier attempt whose stored report this is (0: this attempt's own).
    adopted_attempt: int = 0


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
        task_inputs: TaskInputSource | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.signing_key = signing_key
        self.fetcher = fetcher
        self.bucket = bucket
        self.task_inputs = task_inputs
        raw = public_key_bytes(signing_key)
        if pool.signing_key_id != key_id(raw):
            # The pool signs the reports, this service the summaries and
            # tokens, and both must be the key it publishes.
            raise ValueError("the pool signs reports with another key than the service's")
        self.key_info = SigningKeyInfo(
            public_key=raw,
            public_key_pem=public_key_pem(signing_key).decode("ascii"),
            key_id=key_id(raw),
        )

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of `data` with the service's signing key (summaries)."""
        return self.signing_key.sign(data)

    async def verify(self, request: VerificationRequest, attempt: int = 0) -> StoredVerification:
        target = WriteTarget(self._key_for(request, attempt), attempt)
        request = await self._with_evidence(request)
        (future,) = await self.pool.verify_and_store([(request, target)])
        return self._recorded(await future)

    async def verify_tasks(
        self, leases: Sequence[TaskLease]
    ) -> AsyncIterator[tuple[TaskLease, StoredVerification | Exception]]:
        """Verify started tasks; yields each lease with its result (or its
        fault) as soon as it is ready, in any order. The inputs are read in
        one call and the whole batch goes to the pool at once; one task's fault
        never fails its neighbours."""
        if not leases:
            return
        if self.task_inputs is None:
            raise Unavailable("the tasks service is not configured (TASKS_ADDR)")
        inputs = await self.task_inputs.get(leases)
        prepared = await asyncio.gather(
            *(self._prepare(item) for item in inputs), return_exceptions=True
        )
        ready = [
            (item.lease, p[0], p[1])
            for item, p in zip(inputs, prepared, strict=True)
            if isinstance(p, tuple)
        ]
        futures = await self.pool.verify_and_store(
            [(request, WriteTarget(key, lease.attempt)) for lease, key, request in ready]
        )
        runs = [
            asyncio.ensure_future(self._finish(lease, future))
            for (lease, _, _), future in zip(ready, futures, strict=True)
        ]
        # Adopted (an earlier attempt's report) or a fault: answered at once.
        answered = [
            (item.lease, p if isinstance(p, StoredVerification) else self._logged(item.lease, p))
            for item, p in zip(inputs, prepared, strict=True)
            if isinstance(p, StoredVerification | Exception)
        ]
        try:
            for lease, result in answered:
                yield lease, result
            for done in asyncio.as_completed(runs):
                yield await done
        finally:
            for run in runs:
                run.cancel()

    async def _prepare(
        self, item: TaskInput
    ) -> tuple[str, VerificationRequest] | StoredVerification:
        """The report key and the request to verify, or the earlier attempt's
        report this one adopts."""
        if item.error is not None:
            raise item.error
        if item.request is None:
            raise StaleAttempt("the tasks service returned no inputs for this attempt")
        if item.lease.attempt < 1:
            raise EvidenceMalformed("attempt", "a started task's attempt is 1 or more")
        request = replace(item.request, task_id=item.lease.task_id)
        key = self._key_for(request, item.lease.attempt)
        if item.earlier_attempts:
            adopted = await self._adopt(item.lease, key, item.earlier_attempts)
            if adopted is not None:
                return adopted
        return key, await self._with_evidence(request)

    async def _adopt(
        self, lease: TaskLease, key: str, earlier_attempts: Sequence[int]
    ) -> StoredVerification | None:
        """The stored report of an earlier attempt of the run, when one checks
        (adoption.py); None to verify. Costs one listing of the task's reports,
        and one read per candidate, only for a redelivered task. A repeat of an
        attempt that stored its own report gets that one back (as a first
        attempt's repeat does), whatever an earlier attempt stored."""
        try:
            stored = await asyncio.to_thread(self.store.stored_attempts, lease.task_id)
        except Exception as exc:
            raise ReportStoreUnavailable.of("listing the task's reports", exc) from exc
        if lease.attempt in stored:
            return self._found(await self._read(key), lease.attempt)
        for attempt in adoption.candidates(earlier_attempts, stored):
            key = report_key(lease.task_id, attempt)
            try:
                report = await asyncio.to_thread(self.store.get, key)
            except (ReportNotFound, ReportUnreadable) as exc:
                why = str(exc)
            except Exception as exc:
                raise ReportStoreUnavailable.of("reading the report", exc) from exc
            else:
                why = adoption.refusal(
                    report.body, report.signature, self.key_info.public_key, lease.task_id, attempt
                )
                if not why:
                    log.info(
                        "report.adopted",
                        task_id=lease.task_id,
                        attempt=lease.attempt,
                        adopted_attempt=attempt,
                        key=key,
                    )
                    return replace(self._found(report, lease.attempt), adopted_attempt=attempt)
            log.warning(
                "report.not_adopted",
                task_id=lease.task_id,
                attempt=lease.attempt,
                earlier_attempt=attempt,
                reason=why,
            )
        return None

    async def _finish(
        self, lease: TaskLease, future: asyncio.Future[WrittenReport]
    ) -> tuple[TaskLease, StoredVerification | Exception]:
        try:
            return lease, self._recorded(await future)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return lease, self._logged(lease, exc)

    @staticmethod
    def _logged(lease: TaskLease, exc: Exception) -> Exception:
        if not isinstance(exc, DomainError):
            log.error(
                "verify.unexpected_error",
                task_id=lease.task_id,
                attempt=lease.attempt,
                exc_info=exc,
            )
        return exc

    def _key_for(self, request: VerificationRequest, attempt: int) -> str:
        if not request.task_id:
            raise EvidenceMalformed("task_id", "is required")
        return report_key(request.task_id, attempt)

    async def _with_evidence(self, request: VerificationRequest) -> VerificationRequest:
        if request.evidence.quote:
            return request
        if self.fetcher is None:
            raise EvidenceMalformed("evidence", "no inline evidence and fetching is off")
        return with_fetched(request, await self.fetcher.fetch(request))

    def _recorded(self, report: WrittenReport) -> StoredVerification:
        """A report a pool process signed and stored (or found stored)."""
        if report.already_stored:
            # A repeat of this attempt (a redelivered job, a retried call): the
            # first report stands, and its summary is the answer.
            log.info("report.already_stored", key=report.key)
        else:
            # Counted once per stored report (a repeat of an attempt is not a new run).
            metrics.verification_done(
                [(c["name"], c["status"]) for c in report.summary.get("checks", [])],
                report.seconds,
            )
        return self._stored(report)

    def _found(self, stored: StoredReport, attempt: int) -> StoredVerification:
        """A report read back from the store, as this attempt's result."""
        return self._stored(
            written(stored.body, json.loads(stored.body), WriteTarget(stored.key, attempt), True)
        )

    def _stored(self, report: WrittenReport) -> StoredVerification:
        return StoredVerification(
            summary=report.summary,
            task_id=str(report.summary.get("task_id", "")),
            attempt=report.attempt,
            bucket=self.bucket,
            key=report.key,
            filename=PurePosixPath(report.key).name,
            report_sha256=report.report_sha256,
            already_stored=report.already_stored,
        )

    async def _read(self, key: str) -> StoredReport:
        try:
            return await asyncio.to_thread(self.store.get, key)
        except ReportNotFound:
            raise
        except Exception as exc:
            raise ReportStoreUnavailable.of("reading the report", exc) from exc

    async def get_report(self, task_id: str, attempt: int = 0) -> StoredReport:
        """The report of `attempt`, or (0) of the task's latest attempt."""
        if not task_id:
            raise EvidenceMalformed("task_id", "is required")
        check_task_id(task_id)
        if attempt < 0:
            raise EvidenceMalformed("attempt", "must be 0 (the latest) or an attempt number")
        if attempt:
            key = report_key(task_id, attempt)
        else:
            try:
                key = await asyncio.to_thread(self.store.latest_key, task_id)
            except ReportNotFound:
                raise
            except Exception as exc:
                raise ReportStoreUnavailable.of("listing the task's reports", exc) from exc
        return await self._read(key)

    async def delete_reports(self, task_ids: Sequence[str]) -> list[int | Exception]:
        """Delete every report of each task (retention), a few tasks at once;
        per task, how many reports went, or why not (the others still go)."""
        gate = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(task_id: str) -> int | Exception:
            try:
                canonical_task_id(task_id, "task_ids")
            except DomainError as exc:
                return exc
            async with gate:
                try:
                    deleted = await asyncio.to_thread(self.store.delete_task, task_id)
                except Exception as exc:
                    return ReportStoreUnavailable.of(f"deleting the reports of {task_id}", exc)
            log.info("reports.deleted", task_id=task_id, deleted=deleted)
            return deleted

        return list(await asyncio.gather(*(one(task_id) for task_id in task_ids)))

    async def close(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.aclose()
        await asyncio.to_thread(self.pool.shutdown)
