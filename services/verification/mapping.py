"""Protos to and from the verification domain: requests, summaries, item
statuses. The gRPC servicers (server.py) and the tasks-service client
(task_inputs.py) call these; nothing here does I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from verifier.tasks.v1 import worker_pb2
from verifier.verification.v1 import engine_pb2
from verifier.verification.v1 import verification_pb2 as pb

from shared.attestation import EVIDENCE_FIELDS
from shared.errors import DomainError, NotFound
from shared.grpc_server import status_code_for

from .errors import EvidenceMalformed
from .evidence import evidence_from_dict
from .model import CHECK_ORDER, Evidence, VerificationFlags, VerificationRequest
from .report import signing_key_id
from .report_store import StoredReport
from .service import (
    StaleAttempt,
    StoredVerification,
    TaskInput,
    TaskInputsUnavailable,
    TaskLease,
)

MAX_BATCH = 500

_APP_CONFIG_TYPES: dict[int, Any] = {
    pb.APP_CONFIG_TYPE_UNSPECIFIED: "",
    pb.APP_CONFIG_TYPE_REDPILL: "redpill",
    pb.APP_CONFIG_TYPE_PHALA_CLOUD: "phala_cloud",
}
_CHECKS = {name: pb.Check.Value(f"CHECK_{name.upper()}") for name in CHECK_ORDER}
_CHECK_STATUSES = {
    "passed": pb.CHECK_STATUS_PASSED,
    "failed": pb.CHECK_STATUS_FAILED,
    "skipped": pb.CHECK_STATUS_SKIPPED,
    "error": pb.CHECK_STATUS_ERROR,
}
# Evidence fields beside the quote (which is required and mapped on its own).
_EVIDENCE_FIELDS = tuple(name for name in EVIDENCE_FIELDS if name != "quote")


def flags_from_proto(flags: pb.VerificationFlags) -> VerificationFlags:
    """Unset flags take the defaults (the domain dataclass's)."""
    defaults = VerificationFlags()
    values: dict[str, bool] = {}
    for name in CHECK_ORDER:
        is_set = flags.HasField(name)  # type: ignore[arg-type]
        values[name] = getattr(flags if is_set else defaults, name)
    return VerificationFlags(**values)


def evidence_from_proto(evidence: pb.Evidence) -> Evidence:
    if not evidence.quote:
        if any(getattr(evidence, name) for name in _EVIDENCE_FIELDS):
            raise EvidenceMalformed("evidence.quote", "missing: inline evidence needs the quote")
        return Evidence(quote=b"")
    doc: dict[str, Any] = {"quote": evidence.quote}
    for name in _EVIDENCE_FIELDS:
        value = getattr(evidence, name)
        if value:
            doc[name] = value
    return evidence_from_dict(doc)


def request_from_proto(
    request: pb.VerifyRequest, now: datetime | None = None
) -> VerificationRequest:
    app_config_type = _APP_CONFIG_TYPES.get(request.app_config_type)
    if app_config_type is None:
        raise EvidenceMalformed("app_config_type", f"unknown value {request.app_config_type}")
    evaluated_at = (
        request.evaluation_time.ToDatetime(tzinfo=UTC)
        if request.HasField("evaluation_time")
        else now or datetime.now(UTC)
    )
    compose_hash = request.expected_compose_hash.lower().removeprefix("0x")
    if compose_hash and (
        len(compose_hash) != 64 or any(c not in "0123456789abcdef" for c in compose_hash)
    ):
        raise EvidenceMalformed("expected_compose_hash", "expected 64 hex digits (sha256)")
    return VerificationRequest(
        evidence=evidence_from_proto(request.evidence),
        evaluated_at=evaluated_at,
        task_id=request.task_id,
        app_id=request.app_id,
        app_config_type=app_config_type,
        model_or_domain=request.model_or_domain,
        contract_address=request.contract_address,
        flags=flags_from_proto(request.flags),
        expected_compose_hash=compose_hash,
    )


def leases_from_proto(request: engine_pb2.VerifyTasksRequest) -> list[TaskLease]:
    if len(request.tasks) > MAX_BATCH:
        raise EvidenceMalformed("tasks", f"at most {MAX_BATCH} per call, got {len(request.tasks)}")
    return [TaskLease(task_id=t.task_id, attempt=t.attempt) for t in request.tasks]


def task_inputs_request(leases: list[TaskLease]) -> worker_pb2.GetTaskInputsRequest:
    return worker_pb2.GetTaskInputsRequest(
        tasks=[worker_pb2.TaskAttempt(task_id=x.task_id, attempt=x.attempt) for x in leases]
    )


def task_input_from_proto(lease: TaskLease, item: worker_pb2.TaskInput) -> TaskInput:
    """A stale attempt and an unknown task are both StaleAttempt (drop the job);
    malformed inputs are the task's own fault."""
    if item.task.task_id != lease.task_id or item.task.attempt != lease.attempt:
        return TaskInput(
            lease, error=TaskInputsUnavailable("GetTaskInputs answered for another task")
        )
    if item.status.code != grpc.StatusCode.OK.value[0]:
        message = item.status.message or "refused by the tasks service"
        if item.status.code in (
            grpc.StatusCode.FAILED_PRECONDITION.value[0],
            grpc.StatusCode.NOT_FOUND.value[0],
        ):
            return TaskInput(lease, error=StaleAttempt(message))
        if item.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
            return TaskInput(lease, error=EvidenceMalformed("task", message))
        return TaskInput(lease, error=TaskInputsUnavailable(f"GetTaskInputs: {message}"))
    try:
        return TaskInput(
            lease,
            request=request_from_proto(item.request),
            earlier_attempts=tuple(a for a in item.earlier_attempts if 0 < a < lease.attempt),
        )
    except EvidenceMalformed as exc:
        return TaskInput(lease, error=exc)


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if document:
        struct.update(document)
    return struct


def _check_to_proto(check: dict[str, Any]) -> pb.CheckResult:
    return pb.CheckResult(
        check=_CHECKS[check["name"]],
        status=_CHECK_STATUSES[check["status"]],
        reason=check.get("reason", ""),
        details=_struct(check.get("details") or {}),
        part=check.get("part", ""),
    )


def summary_to_proto(stored: StoredVerification) -> pb.ReportSummary:
    """From the signed report's own fields, so a report found stored and one
    just written give the same summary."""
    doc = stored.summary
    evaluated_at = timestamp_pb2.Timestamp()
    evaluated_at.FromJsonString(str(doc["evaluated_at"]))
    return pb.ReportSummary(
        verdict=pb.VERDICT_PASSED if doc.get("verdict") == "passed" else pb.VERDICT_FAILED,
        checks=[_check_to_proto(check) for check in doc.get("checks", [])],
        # A trust chain's every part (each naming its part); empty for one quote.
        part_checks=[_check_to_proto(check) for check in doc.get("part_checks", [])],
        tcb_status=doc.get("tcb_status", ""),
        advisory_ids=list(doc.get("advisory_ids", [])),
        evaluated_at=evaluated_at,
        s3_bucket=stored.bucket,
        s3_key=stored.key,
        s3_filename=stored.filename,
        report_sha256=stored.report_sha256,
        verifier_version=doc.get("verifier_version", ""),
        task_id=stored.task_id,
        attempt=stored.attempt,
        signing_key_id=signing_key_id(doc),
        adopted_attempt=stored.adopted_attempt,
    )


def signed_summary(summary: pb.ReportSummary, sign: Any, key_id: str) -> pb.SignedSummary:
    """`sign(bytes) -> bytes`: the engine's Ed25519 key. Deterministic
    serialisation, so a repeat of the same report signs the same bytes."""
    data = summary.SerializeToString(deterministic=True)
    return pb.SignedSummary(summary=data, signature=sign(data).hex(), key_id=key_id)


def item_status(exc: Exception) -> status_pb2.Status:
    """An item's status in VerifyTasks: only the codes the worker acts on.
    A stale attempt is FAILED_PRECONDITION (drop); a fault worth retrying is
    UNAVAILABLE; any other domain error is the task's own (INVALID_ARGUMENT).
    An unexpected error is UNAVAILABLE: it costs time, never the task."""
    if isinstance(exc, StaleAttempt):
        code = grpc.StatusCode.FAILED_PRECONDITION
    elif not isinstance(exc, DomainError) or status_code_for(exc) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(exc, NotFound):
        code = grpc.StatusCode.FAILED_PRECONDITION
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    message = str(exc) if isinstance(exc, DomainError) else f"internal error: {type(exc).__name__}"
    return status_pb2.Status(code=code.value[0], message=message[:4096])


def delete_reports_from_proto(request: engine_pb2.DeleteReportsRequest) -> list[str]:
    if not request.task_ids:
        raise EvidenceMalformed("task_ids", "is required")
    if len(request.task_ids) > MAX_BATCH:
        raise EvidenceMalformed(
            "task_ids", f"at most {MAX_BATCH} per call, got {len(request.task_ids)}"
        )
    return list(request.task_ids)


def delete_reports_response(
    task_ids: list[str], results: list[int | Exception]
) -> engine_pb2.DeleteReportsResponse:
    out = engine_pb2.DeleteReportsResponse()
    for task_id, result in zip(task_ids, results, strict=True):
        if isinstance(result, Exception):
            out.tasks.add(task_id=task_id, status=item_status(result))
        else:
            out.tasks.add(
                task_id=task_id, status=status_pb2.Status(code=code_pb2.OK), deleted=result
            )
    return out


def verify_tasks_response(
    lease: TaskLease, result: StoredVerification | Exception, sign: Any, key_id: str
) -> engine_pb2.VerifyTasksResponse:
    finished_at = timestamp_pb2.Timestamp()
    finished_at.GetCurrentTime()
    task = engine_pb2.TaskLease(task_id=lease.task_id, attempt=lease.attempt)
    if isinstance(result, Exception):
        return engine_pb2.VerifyTasksResponse(
            task=task, status=item_status(result), finished_at=finished_at
        )
    return engine_pb2.VerifyTasksResponse(
        task=task,
        status=status_pb2.Status(code=grpc.StatusCode.OK.value[0]),
        signed_summary=signed_summary(summary_to_proto(result), sign, key_id),
        finished_at=finished_at,
    )


def report_response(stored: StoredReport, bucket: str) -> pb.GetReportResponse:
    document = json.loads(stored.body)
    return pb.GetReportResponse(
        report=_struct(document),
        canonical_json=stored.body.decode("utf-8"),
        signature=stored.signature.hex(),
        # The key the report names, not this replica's current one.
        key_id=signing_key_id(document),
        s3_bucket=bucket,
        s3_key=stored.key,
    )
