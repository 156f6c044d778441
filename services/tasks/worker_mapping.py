"""Protobuf <-> domain mapping of the worker path (TaskWorkerService,
QueueStateService). A malformed item becomes that item's error, not the
batch's: one bad item never fails its neighbours."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from verifier.tasks.v1 import worker_pb2
from verifier.verification.v1 import verification_pb2

from shared.errors import DomainError, InvalidArgument
from shared.grpc_server import status_code_for

from . import mapping, validation
from .model import Deferral, Failure, ProgressReport, QueueState, Task
from .worker import ItemResult, SignedCompletion


def status_of(error: DomainError | None) -> status_pb2.Status:
    if error is None:
        return status_pb2.Status(code=0)
    return status_pb2.Status(code=status_code_for(error).value[0], message=str(error))


def acks(results: list[ItemResult]) -> list[worker_pb2.TaskAck]:
    return [worker_pb2.TaskAck(task_id=r.task_id, status=status_of(r.error)) for r in results]


def _attempt(message: worker_pb2.TaskAttempt, where: str) -> tuple[str, int]:
    validation.validate_attempt(message.attempt, f"{where}.attempt")
    return message.task_id, message.attempt


def completion_from_proto(
    item: worker_pb2.TaskCompletion, index: int
) -> SignedCompletion | DomainError:
    where = f"tasks[{index}]"
    try:
        task_id, attempt = _attempt(item.task, f"{where}.task")
        signed = item.signed_summary
        if not signed.summary or not signed.signature or not signed.key_id:
            raise InvalidArgument(
                f"{where}.signed_summary", "summary, signature and key_id are required"
            )
    except DomainError as exc:
        return exc
    return SignedCompletion(
        task_id=task_id,
        attempt=attempt,
        summary_bytes=signed.summary,
        signature=signed.signature,
        key_id=signed.key_id,
        summary=_parse_summary(signed.summary, f"{where}.signed_summary.summary"),
    )


def _parse_summary(data: bytes, field: str) -> mapping.ReportSummary | InvalidArgument:
    try:
        message = verification_pb2.ReportSummary.FromString(data)
        summary = mapping.summary_from_proto(message)
    except DecodeError:
        return InvalidArgument(field, "not a serialized ReportSummary")
    except InvalidArgument as exc:
        return exc
    return mapping.ReportSummary(
        **{
            **summary.__dict__,
            "task_id": message.task_id,
            "attempt": message.attempt,
            "signing_key_id": message.signing_key_id,
        }
    )


def failure_from_proto(item: worker_pb2.TaskFailure, index: int) -> Failure | DomainError:
    where = f"tasks[{index}]"
    try:
        task_id, attempt = _attempt(item.task, f"{where}.task")
        message = validation.validate_error_message(item.error_message)
    except DomainError as exc:
        return exc
    return Failure(task_id, attempt, message)


def deferral_from_proto(item: worker_pb2.TaskDeferral, index: int) -> Deferral | DomainError:
    where = f"tasks[{index}]"
    try:
        task_id, attempt = _attempt(item.task, f"{where}.task")
        if not item.reason.strip():
            raise InvalidArgument(f"{where}.reason", "required: say what the task waits for")
        reason = validation.validate_error_message(item.reason)
        retry_at = (
            mapping.time_from_proto(item.retry_at, f"{where}.retry_at")
            if item.HasField("retry_at")
            else None
        )
    except DomainError as exc:
        return exc
    return Deferral(task_id, attempt, reason, retry_at)


def progress_from_proto(item: worker_pb2.TaskProgress, index: int) -> ProgressReport | DomainError:
    where = f"progress[{index}]"
    try:
        task_id = validation.validate_task_id(item.task.task_id, f"{where}.task.task_id")
        _, attempt = _attempt(item.task, f"{where}.task")
        progress = validation.validate_progress(item.progress)
        message = validation.validate_progress_message(item.message)
    except DomainError as exc:
        return exc
    return ProgressReport(task_id, attempt, progress, message)


def verify_request(task: Task, attempt: int) -> verification_pb2.VerifyRequest:
    """What the verification service needs to verify a started task."""
    request = verification_pb2.VerifyRequest(
        task_id=task.id,
        app_id=task.app_id,
        app_config_type=mapping.app_config_type_to_proto(task.app_config_type),
        model_or_domain=task.model_or_domain,
        contract_address=task.contract_address,
        expected_compose_hash=task.expected_compose_hash,
        attempt=attempt,
    )
    mapping.flags_to_proto(task.verification_flags, request.flags)
    if task.evidence:
        mapping.evidence_to_proto(task.evidence, request.evidence)
    mapping.time_to_proto(task.evaluation_time, request.evaluation_time)
    if task.evaluation_time is None:
        request.ClearField("evaluation_time")
    return request


def queue_state_to_proto(state: QueueState) -> worker_pb2.QueueState:
    message = worker_pb2.QueueState(
        queue_name=state.queue_name,
        paused=state.paused,
        changed_by=state.changed_by,
        completed=state.completed,
        failed=state.failed,
    )
    mapping.time_to_proto(state.changed_at, message.changed_at)
    return message
