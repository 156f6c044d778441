"""Adopting an earlier attempt's report instead of verifying again (issue 14).

A worker that dies or stalls after the engine stored its batch's reports, and
before the tasks service recorded them, leaves each task ACTIVE under an
attempt that will never finish; the redelivered job starts a new attempt. The
tasks service names the earlier attempts of the task's current run
(GetTaskInputs' earlier_attempts; an operator's RetryTask starts a new run, so
a retried task is never adopted). A report one of them stored is this run's
verification, and the engine adopts it rather than verify again: the summary
for the new attempt names the adopted report (its key, verdict and checks) and
no report is stored under the new attempt.

Only a report that checks is adopted: signed by this engine's key, naming
this task and the attempt it is stored under. Anything else is verified again
(it costs time, never a wrong result). Pure: the service does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .report import ATTEMPT_FIELD, verify_report_signature


def candidates(earlier_attempts: Iterable[int], stored_attempts: Iterable[int]) -> list[int]:
    """The earlier attempts of the run that have a stored report, newest first."""
    stored = set(stored_attempts)
    return sorted({a for a in earlier_attempts if a in stored}, reverse=True)


def refusal(body: bytes, signature: bytes, public_key: bytes, task_id: str, attempt: int) -> str:
    """Why the report stored under (task_id, attempt) may not be adopted; ""
    when it may."""
    try:
        signed = verify_report_signature(body, signature, public_key)
    except ValueError:
        signed = False
    if not signed:
        return "its signature does not verify with this engine's key"
    try:
        document: Any = json.loads(body)
    except ValueError:
        return "it is not a JSON report"
    if not isinstance(document, dict):
        return "it is not a JSON report"
    if document.get("task_id") != task_id:
        return f"it names task {document.get('task_id')!r}"
    if document.get(ATTEMPT_FIELD) != attempt:
        return f"it names attempt {document.get(ATTEMPT_FIELD)!r}"
    return ""
