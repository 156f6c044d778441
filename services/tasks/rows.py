"""Rows to domain objects and back (no I/O): what both store adapters read and
write. The audit-event row is built here and nowhere else."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .model import (
    AppConfigType,
    CheckResult,
    EventType,
    NewTask,
    Task,
    TaskEvent,
    TaskStatus,
    VerificationFlags,
)

Row = Mapping[Any, Any]


def utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None and value.tzinfo else value


def task_from_row(row: Row, with_evidence: bool = False) -> Task:
    checks = row["check_results"] or []
    return Task(
        id=str(row["id"]),
        job_name=row["job_name"],
        queue_job_id=row["queue_job_id"],
        request_id=row["request_id"],
        app_id=row["app_id"],
        app_name=row["app_name"],
        app_config_type=AppConfigType(row["app_config_type"]),
        contract_address=row["contract_address"],
        model_or_domain=row["model_or_domain"],
        app_metadata=row["app_metadata"] or {},
        verification_flags=VerificationFlags.from_dict(row["verification_flags"] or {}),
        status=TaskStatus(row["status"]),
        progress=row["progress"],
        error_message=row["error_message"],
        check_results=tuple(CheckResult.from_dict(c) for c in checks),
        verdict=row["verdict"],
        tcb_status=row["tcb_status"],
        s3_bucket=row["s3_bucket"],
        s3_key=row["s3_key"],
        s3_filename=row["s3_filename"],
        expected_compose_hash=row["expected_compose_hash"],
        evaluation_time=utc(row["evaluation_time"]),
        attempts=row["attempts"],
        created_at=utc(row["created_at"]) or row["created_at"],
        updated_at=utc(row["updated_at"]) or row["updated_at"],
        started_at=utc(row["started_at"]),
        finished_at=utc(row["finished_at"]),
        has_evidence=bool(row["has_evidence"]),
        evidence=(row["evidence"] if with_evidence else None),
        created_by=row["created_by"],
        wait_reason=row["wait_reason"],
        next_attempt_at=utc(row["next_attempt_at"]),
        owner=row["owner"],
        run_base_attempt=int(row["run_base_attempt"] or 0),
    )


def event_from_row(row: Row) -> TaskEvent:
    return TaskEvent(
        id=int(row["id"]),
        task_id=str(row["task_id"]),
        type=EventType(row["type"]),
        from_status=TaskStatus(row["from_status"]) if row["from_status"] else None,
        to_status=TaskStatus(row["to_status"]),
        progress=row["progress"],
        message=row["message"],
        request_id=row["request_id"],
        created_at=utc(row["created_at"]) or row["created_at"],
    )


# A run's fields before it starts: a new task's, and what a retry resets
# (ops_store.py) besides the run's times.
UNSTARTED_RUN: dict[str, Any] = {
    "status": TaskStatus.PENDING.value,
    "progress": 0,
    "error_message": "",
    "check_results": None,
    "verdict": "",
    "tcb_status": "",
    "s3_bucket": "",
    "s3_key": "",
    "s3_filename": "",
    "queue_job_id": "",
}


def new_task_row(new: NewTask, now: datetime) -> dict[str, Any]:
    """The tasks row of a new PENDING task (a fresh id)."""
    return {
        "id": str(uuid.uuid4()),
        "job_name": new.job_name,
        "request_id": new.request_id,
        "app_id": new.app_id,
        "app_name": new.app_name,
        "app_config_type": new.app_config_type.value,
        "contract_address": new.contract_address,
        "model_or_domain": new.model_or_domain,
        "app_metadata": new.app_metadata,
        "verification_flags": new.verification_flags.to_dict(),
        **UNSTARTED_RUN,
        "expected_compose_hash": new.expected_compose_hash,
        "evaluation_time": new.evaluation_time,
        "evidence": new.evidence,
        "attempts": 0,
        "run_base_attempt": 0,
        "wait_reason": "",
        "owner": new.owner,
        "created_at": now,
        "updated_at": now,
        "created_by": new.created_by,
    }


@dataclass(frozen=True)
class LeaseRow:
    """One item of a batch change, as the statement found the task: its status
    and attempt before the change (or now, when it was not applied)."""

    task_id: str
    found: bool
    status: TaskStatus | None
    attempt: int
    verdict: str
    applied: bool
    # The attempt after the change (the new lease of a start).
    new_attempt: int
    created_at: datetime | None = None


def lease_row(row: Row) -> LeaseRow:
    found = row["status"] is not None
    return LeaseRow(
        task_id=str(row["id"]),
        found=found,
        status=TaskStatus(row["status"]) if found else None,
        attempt=int(row["attempts"] or 0),
        verdict=row["verdict"] or "",
        applied=bool(row["applied"]),
        new_attempt=int(row["new_attempt"] or 0),
        created_at=utc(row["created_at"]),
    )


@dataclass(frozen=True)
class Audit:
    """What one audit-trail entry says beyond the task's own row: the row's
    from/to status and progress come from the change itself (statements.py)."""

    type: EventType
    message: str
    request_id: str
    at: datetime

    def params(self) -> dict[str, Any]:
        """The bind parameters of the audit-event statement (statements.audit_select)."""
        return {
            "event_type": self.type.value,
            "message": self.message,
            "call_request_id": self.request_id,
            "now": self.at,
        }
