"""Protobuf <-> domain mapping of the tasks service (no I/O). An enum number
the domain does not know is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from verifier.tasks.v1 import tasks_pb2
from verifier.verification.v1 import verification_pb2

from shared.attestation import CHECK_NAMES, EVIDENCE_FIELDS
from shared.errors import InvalidArgument

from . import validation
from .model import (
    CHECK_STATUSES,
    AppConfigType,
    CheckResult,
    ListFilter,
    NewTask,
    ReportSummary,
    Task,
    TaskEvent,
    TaskStats,
    TaskStatus,
    TaskView,
    VerificationFlags,
)

_STATUS_TO_PROTO: dict[TaskStatus, tasks_pb2.TaskStatus.ValueType] = {
    TaskStatus.PENDING: tasks_pb2.TASK_STATUS_PENDING,
    TaskStatus.QUEUED: tasks_pb2.TASK_STATUS_QUEUED,
    TaskStatus.ACTIVE: tasks_pb2.TASK_STATUS_ACTIVE,
    TaskStatus.COMPLETED: tasks_pb2.TASK_STATUS_COMPLETED,
    TaskStatus.FAILED: tasks_pb2.TASK_STATUS_FAILED,
    TaskStatus.CANCELLED: tasks_pb2.TASK_STATUS_CANCELLED,
    TaskStatus.WAITING: tasks_pb2.TASK_STATUS_WAITING,
}
_STATUS_FROM_PROTO: dict[int, TaskStatus] = {
    number: status for status, number in _STATUS_TO_PROTO.items()
}

_TYPE_TO_PROTO: dict[AppConfigType, verification_pb2.AppConfigType.ValueType] = {
    AppConfigType.REDPILL: verification_pb2.APP_CONFIG_TYPE_REDPILL,
    AppConfigType.PHALA_CLOUD: verification_pb2.APP_CONFIG_TYPE_PHALA_CLOUD,
}
_TYPE_FROM_PROTO: dict[int, AppConfigType] = {
    number: kind for kind, number in _TYPE_TO_PROTO.items()
}

_CHECK_TO_PROTO: dict[str, verification_pb2.Check.ValueType] = {
    name: verification_pb2.Check.Value(f"CHECK_{name.upper()}") for name in CHECK_NAMES
}
_CHECK_FROM_PROTO: dict[int, str] = {number: name for name, number in _CHECK_TO_PROTO.items()}
_CHECK_STATUS_TO_PROTO: dict[str, verification_pb2.CheckStatus.ValueType] = {
    name: verification_pb2.CheckStatus.Value(f"CHECK_STATUS_{name.upper()}")
    for name in CHECK_STATUSES
}
_CHECK_STATUS_FROM_PROTO: dict[int, str] = {
    number: name for name, number in _CHECK_STATUS_TO_PROTO.items()
}
_VERDICT_TO_PROTO: dict[str, verification_pb2.Verdict.ValueType] = {
    "": verification_pb2.VERDICT_UNSPECIFIED,
    "passed": verification_pb2.VERDICT_PASSED,
    "failed": verification_pb2.VERDICT_FAILED,
}
_VERDICT_FROM_PROTO: dict[int, str] = {number: name for name, number in _VERDICT_TO_PROTO.items()}
_FLAG_NAMES = tuple(VerificationFlags().to_dict())


# --- scalars ---------------------------------------------------------------------


def status_from_proto(value: int, field: str = "status") -> TaskStatus | None:
    if value == tasks_pb2.TASK_STATUS_UNSPECIFIED:
        return None
    status = _STATUS_FROM_PROTO.get(value)
    if status is None:
        raise InvalidArgument(field, f"unknown task status {value}")
    return status


def status_to_proto(status: TaskStatus | None) -> tasks_pb2.TaskStatus.ValueType:
    return _STATUS_TO_PROTO[status] if status is not None else tasks_pb2.TASK_STATUS_UNSPECIFIED


def app_config_type_from_proto(value: int, field: str = "app_config_type") -> AppConfigType | None:
    if value == verification_pb2.APP_CONFIG_TYPE_UNSPECIFIED:
        return None
    kind = _TYPE_FROM_PROTO.get(value)
    if kind is None:
        raise InvalidArgument(field, f"unknown app config type {value}; use redpill or phala_cloud")
    return kind


def app_config_type_to_proto(kind: AppConfigType) -> verification_pb2.AppConfigType.ValueType:
    return _TYPE_TO_PROTO[kind]


def verdict_to_proto(verdict: str) -> verification_pb2.Verdict.ValueType:
    return _VERDICT_TO_PROTO.get(verdict, verification_pb2.VERDICT_UNSPECIFIED)


def view_from_proto(value: int) -> TaskView:
    if value in (tasks_pb2.TASK_VIEW_UNSPECIFIED, tasks_pb2.TASK_VIEW_BASIC):
        return TaskView.BASIC
    if value == tasks_pb2.TASK_VIEW_FULL:
        return TaskView.FULL
    raise InvalidArgument("view", f"unknown task view {value}")


def time_from_proto(message: Any, field: str, container: Any | None = None) -> datetime | None:
    """A set Timestamp field as an aware UTC datetime; None when unset."""
    if container is not None and not container.HasField(field):
        return None
    try:
        return validation.validate_timestamp(field, message.ToDatetime(tzinfo=UTC))
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "not a valid timestamp") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_to_proto(value: datetime | None, target: timestamp_pb2.Timestamp) -> None:
    """Timestamp.FromDatetime, without its timetuple round trip (five per task
    on every call that returns one). A naive value is UTC, as there."""
    if value is not None:
        delta = (value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH
        target.seconds = delta.days * 86400 + delta.seconds
        target.nanos = delta.microseconds * 1000


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct as plain values, NaN and Infinity kept as floats so that
    validation names where they are (json_format raises a bare ValueError on
    them: an INTERNAL for a caller's bad value over gRPC)."""
    return {key: _plain(value) for key, value in message.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def dict_to_struct(value: Mapping[str, Any], target: struct_pb2.Struct) -> None:
    if value:
        target.update(value)


# --- composite values ------------------------------------------------------------


def flags_from_proto(message: verification_pb2.VerificationFlags) -> dict[str, bool | None]:
    return {
        name: getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]
        for name in _FLAG_NAMES
    }


def flags_to_proto(flags: VerificationFlags, target: verification_pb2.VerificationFlags) -> None:
    for name, value in flags.to_dict().items():
        setattr(target, name, value)


def evidence_from_proto(message: verification_pb2.Evidence) -> dict[str, str]:
    return {name: getattr(message, name) for name in EVIDENCE_FIELDS}


def evidence_to_proto(evidence: Mapping[str, str], target: verification_pb2.Evidence) -> None:
    for name in EVIDENCE_FIELDS:
        value = evidence.get(name)
        if value:
            setattr(target, name, value)


def summary_from_proto(message: verification_pb2.ReportSummary) -> ReportSummary:
    checks: list[CheckResult] = []
    for index, result in enumerate(message.checks):
        where = f"summary.checks[{index}]"
        name = _CHECK_FROM_PROTO.get(result.check)
        if name is None:
            raise InvalidArgument(f"{where}.check", f"unknown or unspecified check {result.check}")
        status = _CHECK_STATUS_FROM_PROTO.get(result.status)
        if status is None:
            raise InvalidArgument(
                f"{where}.status", f"unknown or unspecified check status {result.status}"
            )
        checks.append(
            CheckResult(
                check=name,
                status=status,
                reason=result.reason,
                details=struct_to_dict(result.details),
            )
        )
    verdict = _VERDICT_FROM_PROTO.get(message.verdict)
    if verdict is None:
        raise InvalidArgument("summary.verdict", f"unknown verdict {message.verdict}")
    return ReportSummary(
        verdict=verdict,
        checks=tuple(checks),
        tcb_status=message.tcb_status,
        s3_bucket=message.s3_bucket,
        s3_key=message.s3_key,
        s3_filename=message.s3_filename,
    )


def check_result_to_proto(result: CheckResult, target: verification_pb2.CheckResult) -> None:
    target.check = _CHECK_TO_PROTO.get(result.check, verification_pb2.CHECK_UNSPECIFIED)
    target.status = _CHECK_STATUS_TO_PROTO.get(
        result.status, verification_pb2.CHECK_STATUS_UNSPECIFIED
    )
    target.reason = result.reason
    dict_to_struct(result.details, target.details)


# --- requests --------------------------------------------------------------------


def new_task_from_proto(request: tasks_pb2.CreateTaskRequest) -> NewTask:
    return validation.validate_new_task(
        request_id=request.request_id,
        app_id=request.app_id,
        app_name=request.app_name,
        app_config_type=app_config_type_from_proto(request.app_config_type),
        contract_address=request.contract_address,
        model_or_domain=request.model_or_domain,
        app_metadata=struct_to_dict(request.app_metadata)
        if request.HasField("app_metadata")
        else None,
        verification_flags=flags_from_proto(request.verification_flags)
        if request.HasField("verification_flags")
        else None,
        evidence=evidence_from_proto(request.evidence) if request.HasField("evidence") else None,
        expected_compose_hash=request.expected_compose_hash,
        evaluation_time=time_from_proto(request.evaluation_time, "evaluation_time", request),
    )


def new_tasks_from_proto(request: tasks_pb2.BatchCreateTasksRequest) -> list[NewTask]:
    """Every item validated; the first invalid one is INVALID_ARGUMENT naming its
    field within the batch (`requests[3].evidence.quote`)."""
    validation.validate_batch_size(len(request.requests), "requests")
    news: list[NewTask] = []
    for index, item in enumerate(request.requests):
        try:
            news.append(new_task_from_proto(item))
        except InvalidArgument as exc:
            raise exc.within(f"requests[{index}]") from None
    return news


def list_filter_from_proto(request: tasks_pb2.ListTasksRequest) -> ListFilter:
    after, before = validation.validate_time_window(
        time_from_proto(request.created_after, "created_after", request),
        time_from_proto(request.created_before, "created_before", request),
    )
    return ListFilter(
        status=status_from_proto(request.status),
        app_id=validation.validate_app_id(request.app_id),
        app_config_type=app_config_type_from_proto(request.app_config_type),
        created_after=after,
        created_before=before,
    )


# --- responses -------------------------------------------------------------------


def task_to_proto(task: Task, view: TaskView = TaskView.BASIC) -> tasks_pb2.Task:
    message = tasks_pb2.Task(
        id=task.id,
        job_name=task.job_name,
        queue_job_id=task.queue_job_id,
        app_id=task.app_id,
        app_name=task.app_name,
        app_config_type=_TYPE_TO_PROTO[task.app_config_type],
        contract_address=task.contract_address,
        model_or_domain=task.model_or_domain,
        status=_STATUS_TO_PROTO[task.status],
        progress=task.progress,
        error_message=task.error_message,
        s3_bucket=task.s3_bucket,
        s3_key=task.s3_key,
        s3_filename=task.s3_filename,
        request_id=task.request_id or "",
        attempts=task.attempts,
        verdict=_VERDICT_TO_PROTO.get(task.verdict, verification_pb2.VERDICT_UNSPECIFIED),
        tcb_status=task.tcb_status,
        expected_compose_hash=task.expected_compose_hash,
        has_evidence=task.has_evidence,
        created_by=task.created_by,
        wait_reason=task.wait_reason,
    )
    dict_to_struct(task.app_metadata, message.app_metadata)
    flags_to_proto(task.verification_flags, message.verification_flags)
    for result in task.check_results:
        check_result_to_proto(result, message.check_results.add())
    time_to_proto(task.created_at, message.created_at)
    time_to_proto(task.updated_at, message.updated_at)
    time_to_proto(task.started_at, message.started_at)
    time_to_proto(task.finished_at, message.finished_at)
    time_to_proto(task.evaluation_time, message.evaluation_time)
    time_to_proto(task.next_attempt_at, message.next_attempt_at)
    if view is TaskView.FULL and task.evidence:
        evidence_to_proto(task.evidence, message.evidence)
    return message


def event_to_proto(event: TaskEvent) -> tasks_pb2.TaskEvent:
    message = tasks_pb2.TaskEvent(
        id=event.id,
        task_id=event.task_id,
        type=event.type.value,
        from_status=status_to_proto(event.from_status),
        to_status=status_to_proto(event.to_status),
        progress=event.progress,
        message=event.message,
        request_id=event.request_id,
    )
    time_to_proto(event.created_at, message.created_at)
    return message


def stats_to_proto(stats: TaskStats) -> tasks_pb2.GetTaskStatsResponse:
    counts = {status.value: stats.by_status.get(status, 0) for status in TaskStatus}

    return tasks_pb2.GetTaskStatsResponse(
        total=stats.total,
        average_processing_seconds=stats.average_processing_seconds,
        p95_processing_seconds=stats.p95_processing_seconds,
        **counts,
    )
