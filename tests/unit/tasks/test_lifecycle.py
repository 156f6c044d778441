"""The lifecycle rules: outcomes from report summaries, refused and no-op
transitions, the percentile the stats use."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.tasks import lifecycle
from services.tasks.errors import InvalidTransition
from services.tasks.model import (
    AppConfigType,
    CheckResult,
    ReportSummary,
    Task,
    TaskStatus,
    VerificationFlags,
)
from shared.attestation import CHECK_NAMES

DEFAULT_ENABLED = ("hardware", "os", "source_code", "tee_controlled_key", "certificate_key")


def _summary(verdict: str = "passed", **statuses: str) -> ReportSummary:
    checks = []
    for name in CHECK_NAMES:
        status = statuses.get(name, "passed" if name in DEFAULT_ENABLED else "skipped")
        checks.append(CheckResult(name, status, reason=f"{name} reason"))
    return ReportSummary(verdict=verdict, checks=tuple(checks))


def _task(status: TaskStatus) -> Task:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Task(
        id="t-1",
        job_name="verify:redpill",
        queue_job_id="",
        request_id=None,
        app_id="",
        app_name="",
        app_config_type=AppConfigType.REDPILL,
        contract_address="",
        model_or_domain="",
        app_metadata={},
        verification_flags=VerificationFlags(),
        status=status,
        progress=0,
        error_message="",
        check_results=(),
        verdict="",
        tcb_status="",
        s3_bucket="",
        s3_key="",
        s3_filename="",
        expected_compose_hash="",
        evaluation_time=None,
        attempts=0,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        has_evidence=False,
    )


def test_a_passed_verdict_completes_as_the_engine_signed_it() -> None:
    # Not recomputed: the engine decided, even with a check it skipped.
    summary = _summary("passed", hardware="skipped")
    assert lifecycle.outcome_of(summary) == (TaskStatus.COMPLETED, "")


def test_a_failed_verdict_fails_naming_the_checks_that_failed() -> None:
    status, message = lifecycle.outcome_of(_summary("failed", os="failed", source_code="error"))
    assert status is TaskStatus.FAILED
    assert "os failed: os reason" in message
    assert "source_code error: source_code reason" in message
    assert "hardware" not in message


def test_a_failed_verdict_without_a_failed_check_names_what_did_not_pass() -> None:
    status, message = lifecycle.outcome_of(_summary("failed", hardware="skipped"))
    assert status is TaskStatus.FAILED and "hardware skipped" in message
    status, message = lifecycle.outcome_of(ReportSummary(verdict="failed"))
    assert status is TaskStatus.FAILED and "verdict is FAILED" in message


def test_failure_message_is_bounded() -> None:
    summary = ReportSummary(
        verdict="failed",
        checks=tuple(CheckResult(name, "failed", "r" * 2000) for name in CHECK_NAMES),
    )
    _, message = lifecycle.outcome_of(summary)
    assert len(message) == 4096 and message.endswith("...")


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED])
def test_cancel_of_finished_task_is_refused_naming_its_status(status: TaskStatus) -> None:
    with pytest.raises(InvalidTransition) as caught:
        lifecycle.CANCEL.refuse_or_noop(_task(status))
    assert status.value in caught.value.message


def test_cancel_of_cancelled_task_is_a_no_op() -> None:
    task = _task(TaskStatus.CANCELLED)
    assert lifecycle.CANCEL.refuse_or_noop(task) is task


@pytest.mark.parametrize("status", sorted(lifecycle.FINISHED_STATUSES))
def test_repeated_complete_or_fail_on_a_finished_task_is_a_no_op(status: TaskStatus) -> None:
    task = _task(status)
    assert lifecycle.COMPLETE.refuse_or_noop(task) is task
    assert lifecycle.FAIL.refuse_or_noop(task) is task


@pytest.mark.parametrize("status", sorted(lifecycle.FINISHED_STATUSES))
def test_start_of_finished_task_is_refused(status: TaskStatus) -> None:
    assert status not in lifecycle.START.allowed_from
    with pytest.raises(InvalidTransition):
        lifecycle.START.refuse_or_noop(_task(status))


def test_no_transition_leaves_a_finished_status() -> None:
    for transition in (
        lifecycle.START,
        lifecycle.CANCEL,
        lifecycle.COMPLETE,
        lifecycle.FAIL,
        lifecycle.PROGRESS,
        lifecycle.DEFER,
        lifecycle.ENQUEUE,
        lifecycle.REQUEUE,
    ):
        assert not transition.allowed_from & lifecycle.FINISHED_STATUSES, transition.operation


def test_start_accepts_pending_queued_active_and_waiting() -> None:
    assert lifecycle.START.allowed_from == {
        TaskStatus.PENDING,
        TaskStatus.QUEUED,
        TaskStatus.ACTIVE,
        TaskStatus.WAITING,
    }


def test_only_an_active_task_is_deferred_and_a_repeat_is_a_noop() -> None:
    assert lifecycle.DEFER.allowed_from == {TaskStatus.ACTIVE}
    assert lifecycle.DEFER.noop_from == {TaskStatus.WAITING}


def test_an_item_for_another_attempt_is_stale_whatever_the_status() -> None:
    found = (TaskStatus.ACTIVE, 3)
    assert lifecycle.lease_outcome(lifecycle.COMPLETE, 2, found) is lifecycle.Refusal.STALE
    assert lifecycle.lease_outcome(lifecycle.COMPLETE, 2, None) is lifecycle.Refusal.NOT_FOUND


def test_a_repeat_for_the_current_attempt_is_accepted_only_when_it_says_so() -> None:
    done = (TaskStatus.COMPLETED, 2)
    assert lifecycle.lease_outcome(lifecycle.COMPLETE, 2, done, repeated=True) is None
    assert lifecycle.lease_outcome(lifecycle.COMPLETE, 2, done) is lifecycle.Refusal.STATUS
    cancelled = (TaskStatus.CANCELLED, 2)
    assert (
        lifecycle.lease_outcome(lifecycle.DEFER, 2, cancelled, repeated=True)
        is lifecycle.Refusal.STATUS
    )


def test_complete_before_start_is_refused() -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.COMPLETE.refuse_or_noop(_task(TaskStatus.QUEUED))


def test_percentile_cont_matches_postgresql() -> None:
    assert lifecycle.percentile_cont([1.0, 2.0, 3.0, 4.0, 10.0], 0.95) == pytest.approx(8.8)
    assert lifecycle.percentile_cont([5.0], 0.95) == 5.0
    assert lifecycle.percentile_cont([], 0.95) == 0.0
    assert lifecycle.percentile_cont([1.0, 3.0], 0.5) == 2.0


def test_earlier_attempts_are_those_of_the_current_run_only() -> None:
    # The first run: every attempt before this one.
    assert lifecycle.earlier_attempts(0, 1) == ()
    assert lifecycle.earlier_attempts(0, 4) == (1, 2, 3)
    # After an operator retry at attempt 3: the new run starts at attempt 4,
    # and never names the failed run's attempts (a retried task is verified anew).
    assert lifecycle.earlier_attempts(3, 4) == ()
    assert lifecycle.earlier_attempts(3, 6) == (4, 5)
