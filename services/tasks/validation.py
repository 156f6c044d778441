"""Input validation of the tasks domain: every bound and format, with the
offending field named (INVALID_ARGUMENT). Pure: no I/O."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from shared.attestation import (
    CHECK_NAMES,
    EVIDENCE_LIMITS,
    PHALA_CLOUD_APP_ID,
    REDPILL_MODEL,
)
from shared.errors import InvalidArgument
from shared.ids import canonical_task_id
from shared.json_numbers import non_finite_path
from shared.text import MAX_REASON
from shared.text import bounded_text as _bounded_text

from .model import (
    CHECK_STATUSES,
    AppConfigType,
    NewTask,
    ReportSummary,
    VerificationFlags,
)

MAX_REQUEST_ID = 128
MAX_APP_ID = 128
MAX_APP_NAME = 256
MAX_MODEL_OR_DOMAIN = 253
MAX_METADATA_BYTES = 16 * 1024
MAX_ERROR_MESSAGE = 4 * 1024
MAX_WORKER_ID = 256
MAX_PROGRESS_MESSAGE = 512
# What a task keeps of a report summary (check results with their details).
MAX_SUMMARY_BYTES = 256 * 1024
# At most this many tasks per BatchCreateTasks (AIP-233's usual bound).
MAX_CREATE_BATCH = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


_APP_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CONTRACT = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# Timestamps outside this window are typos, not moments a quote can be evaluated at.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def validate_request_id(value: str) -> str | None:
    """The idempotency key, or None when the client sent none."""
    if not value:
        return None
    return _bounded_text("request_id", value, MAX_REQUEST_ID)


def validate_task_id(value: str, field: str = "id") -> str:
    """A task id is a canonical lowercase UUID (the only spelling any route takes)."""
    return canonical_task_id(value, field)


def validate_app_id(value: str, field: str = "app_id") -> str:
    if not value:
        return ""
    if len(value) > MAX_APP_ID:
        raise InvalidArgument(field, f"at most {MAX_APP_ID} characters, got {len(value)}")
    if not _APP_ID.match(value):
        raise InvalidArgument(field, "only letters, digits and _ . : - are allowed")
    return value


def validate_contract_address(value: str) -> str:
    if not value:
        return ""
    if not _CONTRACT.match(value):
        raise InvalidArgument("contract_address", "expected 0x followed by 40 hex digits")
    return value.lower()


def validate_compose_hash(value: str) -> str:
    if not value:
        return ""
    text = value[2:] if value[:2] in ("0x", "0X") else value
    if not _SHA256_HEX.match(text):
        raise InvalidArgument("expected_compose_hash", "expected 64 hex digits (a sha256)")
    return text.lower()


def validate_metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(value)
    bad = non_finite_path(data, "app_metadata")
    if bad is not None:
        raise InvalidArgument(bad, "NaN, Infinity and out-of-range numbers are not JSON numbers")
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            "app_metadata", f"at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"
        )
    return data


def _is_hex(text: str) -> bool:
    """Hex digits only, an even number of them. binascii decodes in C: the
    regex took a third of a CreateTask's mapping on a 10 KB quote."""
    try:
        binascii.unhexlify(text)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return False
    return True


def validate_evidence(value: Mapping[str, str] | None) -> dict[str, str] | None:
    """Bounded inline evidence; None when absent or entirely empty."""
    if value is None:
        return None
    evidence = {name: text for name, text in value.items() if text}
    if not evidence:
        return None
    for name, text in evidence.items():
        limit = EVIDENCE_LIMITS.get(name)
        if limit is None:
            raise InvalidArgument(f"evidence.{name}", "unknown evidence field")
        if len(text) > limit:
            raise InvalidArgument(
                f"evidence.{name}", f"at most {limit} characters, got {len(text)}"
            )
    for name in ("quote", "report_data"):
        text = evidence.get(name, "")
        body = text[2:] if text[:2] in ("0x", "0X") else text
        if not _is_hex(body):
            raise InvalidArgument(f"evidence.{name}", "expected hex text")
    if "quote" not in evidence:
        raise InvalidArgument("evidence.quote", "required when evidence is given")
    return evidence


def validate_evidence_source(
    app_config_type: AppConfigType,
    app_id: str,
    model_or_domain: str,
    evidence: Mapping[str, str] | None,
) -> None:
    """A task without inline evidence must name what its source fetches it by;
    refused here, it would only fail later, at verification."""
    if evidence:
        return
    if app_config_type == "phala_cloud" and not PHALA_CLOUD_APP_ID.match(app_id):
        raise InvalidArgument(
            "app_id",
            "phala_cloud fetches the evidence by the app's id: expected the hex app id "
            f"(got {app_id[:64]!r}), or give the evidence inline",
        )
    if app_config_type == "redpill" and not REDPILL_MODEL.match(model_or_domain):
        raise InvalidArgument(
            "model_or_domain",
            "redpill fetches the evidence by model name: expected a name such as "
            f"org/model (got {model_or_domain[:64]!r}), or give the evidence inline",
        )


def validate_timestamp(field: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not _EARLIEST <= value < _LATEST:
        raise InvalidArgument(field, f"out of range: {value.isoformat()}")
    return value


def flags_with_defaults(given: Mapping[str, bool | None] | None) -> VerificationFlags:
    """The flags a task runs with: the client's where set, the defaults elsewhere."""
    if not given:
        return VerificationFlags()
    defaults = VerificationFlags()
    values: dict[str, bool] = {}
    for f in fields(VerificationFlags):
        value = given.get(f.name)
        values[f.name] = bool(value) if value is not None else bool(getattr(defaults, f.name))
    flags = VerificationFlags(**values)
    if not flags.enabled():
        raise InvalidArgument("verification_flags", "at least one check must be enabled")
    needing = [name for name in ("os", "source_code") if getattr(flags, name)]
    if needing and not flags.hardware:
        # Measurements read from a quote nobody verified prove nothing.
        raise InvalidArgument(
            "verification_flags",
            f"verificationFlags: {' and '.join(needing)} need hardware (a verified quote); "
            "enable hardware or turn them off",
        )
    return flags


def validate_new_task(
    *,
    request_id: str,
    app_id: str,
    app_name: str,
    app_config_type: AppConfigType | None,
    contract_address: str,
    model_or_domain: str,
    app_metadata: Mapping[str, Any] | None,
    verification_flags: Mapping[str, bool | None] | None,
    evidence: Mapping[str, str] | None,
    expected_compose_hash: str,
    evaluation_time: datetime | None,
) -> NewTask:
    """Validate a CreateTask request and fill in the defaults."""
    if app_config_type is None:
        raise InvalidArgument("app_config_type", "required: redpill or phala_cloud")
    task = NewTask(
        request_id=validate_request_id(request_id),
        app_id=validate_app_id(app_id),
        app_name=_bounded_text("app_name", app_name, MAX_APP_NAME),
        app_config_type=app_config_type,
        contract_address=validate_contract_address(contract_address),
        model_or_domain=_bounded_text("model_or_domain", model_or_domain, MAX_MODEL_OR_DOMAIN),
        app_metadata=validate_metadata(app_metadata or {}),
        verification_flags=flags_with_defaults(verification_flags),
        evidence=validate_evidence(evidence),
        expected_compose_hash=validate_compose_hash(expected_compose_hash),
        evaluation_time=validate_timestamp("evaluation_time", evaluation_time),
    )
    validate_evidence_source(app_config_type, task.app_id, task.model_or_domain, task.evidence)
    return task


def validate_batch_size(size: int, field: str, limit: int = MAX_CREATE_BATCH) -> int:
    if size == 0:
        raise InvalidArgument(field, "at least one item")
    if size > limit:
        raise InvalidArgument(field, f"at most {limit} items, got {size}")
    return size


def validate_page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE}, got {value}")
    return value


def validate_time_window(
    created_after: datetime | None, created_before: datetime | None
) -> tuple[datetime | None, datetime | None]:
    after = validate_timestamp("created_after", created_after)
    before = validate_timestamp("created_before", created_before)
    if after is not None and before is not None and after >= before:
        raise InvalidArgument("created_before", "must be later than created_after")
    return after, before


def validate_progress(value: int) -> int:
    if not 0 <= value <= 100:
        raise InvalidArgument("progress", f"must be between 0 and 100, got {value}")
    return value


def validate_reason(value: str) -> str:
    return _bounded_text("reason", value, MAX_REASON)


MAX_QUEUE_NAME = 128
MAX_CHANGED_BY = 256


def validate_queue_name(value: str) -> str:
    if not value or len(value) > MAX_QUEUE_NAME or not value.isprintable():
        raise InvalidArgument(
            "queue_name", f"required: printable text of at most {MAX_QUEUE_NAME} characters"
        )
    return value


def validate_attempt(value: int, field: str = "attempt") -> int:
    """An attempt number StartTasks handed out (1 for the first start)."""
    if value < 1:
        raise InvalidArgument(
            field, f"must be an attempt StartTasks returned (1 or more), got {value}"
        )
    return value


def validate_worker_id(value: str) -> str:
    return _bounded_text("worker_id", value, MAX_WORKER_ID)


def validate_progress_message(value: str) -> str:
    return _bounded_text("message", value, MAX_PROGRESS_MESSAGE)


def validate_error_message(value: str) -> str:
    if not value.strip():
        raise InvalidArgument("error_message", "required: say why the task failed")
    return _bounded_text("error_message", value, MAX_ERROR_MESSAGE, single_line=False)


def validate_summary(summary: ReportSummary | None) -> ReportSummary:
    """A report summary a task can store: known checks, each once, bounded size."""
    if summary is None:
        raise InvalidArgument("summary", "required")
    if summary.verdict not in ("passed", "failed"):
        raise InvalidArgument("summary.verdict", "must be PASSED or FAILED")
    seen: set[str] = set()
    for index, result in enumerate(summary.checks):
        where = f"summary.checks[{index}]"
        if result.check not in CHECK_NAMES:
            raise InvalidArgument(f"{where}.check", "unknown or unspecified check")
        if result.check in seen:
            raise InvalidArgument(f"{where}.check", f"{result.check} reported twice")
        seen.add(result.check)
        if result.status not in CHECK_STATUSES:
            raise InvalidArgument(f"{where}.status", "unknown or unspecified check status")
    size = len(json.dumps([c.to_dict() for c in summary.checks], default=str).encode())
    if size > MAX_SUMMARY_BYTES:
        raise InvalidArgument("summary.checks", f"at most {MAX_SUMMARY_BYTES} bytes, got {size}")
    for name, value in (
        ("summary.tcb_status", summary.tcb_status),
        ("summary.s3_bucket", summary.s3_bucket),
        ("summary.s3_key", summary.s3_key),
        ("summary.s3_filename", summary.s3_filename),
    ):
        _bounded_text(name, value, 1024)
    return summary
