"""Per-item statuses of VerifyTasks: only the codes the worker acts on."""

from __future__ import annotations

import grpc
import pytest

from services.verification.errors import (
    CollateralExpired,
    CollateralUnavailable,
    EvidenceMalformed,
    FetchFailed,
    FetchNotAllowed,
    FetchRejected,
    ReportStoreUnavailable,
)
from services.verification.mapping import item_status
from services.verification.pool import EngineProcessDied
from services.verification.service import (
    StaleAttempt,
    TaskInputsUnavailable,
)

DROP = grpc.StatusCode.FAILED_PRECONDITION
RETRY = grpc.StatusCode.UNAVAILABLE
FAIL = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StaleAttempt("stale attempt"), DROP),
        (ReportStoreUnavailable("storing the report failed"), RETRY),
        (TaskInputsUnavailable("GetTaskInputs: UNAVAILABLE"), RETRY),
        (EngineProcessDied("a verification process died"), RETRY),
        (CollateralUnavailable("no collateral"), RETRY),
        (FetchFailed("timeout"), RETRY),
        (EvidenceMalformed("evidence.quote", "not hex"), FAIL),
        # FailedPrecondition of the task's own is a failure, never a silent drop.
        (CollateralExpired("outside its window"), FAIL),
        (FetchRejected("404 from the source"), FAIL),
        (FetchNotAllowed("host not allowed"), FAIL),
        # A bug costs time (retried within the budget), never the task at once.
        (RuntimeError("boom"), RETRY),
    ],
)
def test_item_status_folds_every_error_into_drop_retry_or_fail(
    error: Exception, code: grpc.StatusCode
) -> None:
    status = item_status(error)
    assert status.code == code.value[0]
    assert status.message


def test_an_unexpected_error_does_not_leak_its_text() -> None:
    status = item_status(RuntimeError("secret=hunter2"))
    assert "hunter2" not in status.message
    assert "RuntimeError" in status.message
