"""Pure mappings between the task record and the verification request (no I/O)."""

from __future__ import annotations

from verifier.tasks.v1 import tasks_pb2
from verifier.verification.v1 import verification_pb2


def verify_request_for(task: tasks_pb2.Task) -> verification_pb2.VerifyRequest:
    """The Verify call for a started task: its app, its flags, its inline evidence
    and its evaluation time. The outcome is decided by the engine from these."""
    request = verification_pb2.VerifyRequest(
        task_id=task.id,
        app_id=task.app_id,
        app_config_type=task.app_config_type,
        model_or_domain=task.model_or_domain,
        contract_address=task.contract_address,
        expected_compose_hash=task.expected_compose_hash,
        # The report is written once under the task and this attempt.
        attempt=task.attempts,
    )
    if task.HasField("verification_flags"):
        request.flags.CopyFrom(task.verification_flags)
    if task.HasField("evidence"):
        request.evidence.CopyFrom(task.evidence)
    if task.HasField("evaluation_time"):
        request.evaluation_time.CopyFrom(task.evaluation_time)
    return request


def verdict_name(summary: verification_pb2.ReportSummary) -> str:
    return str(verification_pb2.Verdict.Name(summary.verdict)).removeprefix("VERDICT_").lower()
