"""Apps and their schedules: the domain (pure, no I/O).

An app is re-verified on a schedule. `next_run` decides when: the reference
system's rule by default (trust-center's cron: no task yet, last success older
than 24 h, last failure older than 30 min), an app's own intervals, or a cron
expression (UTC). An app whose latest task still runs is never due: one task
at a time per app.

Exactly once: the scheduler creates an app's next task with the request id
`scheduled_request_id(app)`, which depends only on the app and its latest
task. A scheduler that dies after creating the task and before recording it
on the app creates nothing new next time: the retried create returns the
first task.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from shared.errors import InvalidArgument

from . import validation
from .model import AppConfigType, NewTask, TaskStatus, VerificationFlags

DEFAULT_INTERVAL_SECONDS = 24 * 3600
DEFAULT_RETRY_INTERVAL_SECONDS = 30 * 60
MIN_INTERVAL_SECONDS = 60
MAX_INTERVAL_SECONDS = 31 * 24 * 3600
MAX_CRON = 128
SCHEDULER = "scheduler"


class AppState(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DELETED = "deleted"


class AppSource(enum.Enum):
    API = "api"
    PHALA_CLOUD = "phala_cloud"


@dataclass(frozen=True)
class Schedule:
    """None fields take the reference's defaults; a cron expression replaces them."""

    interval_seconds: int | None = None
    retry_interval_seconds: int | None = None
    cron: str = ""

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.interval_seconds or DEFAULT_INTERVAL_SECONDS)

    @property
    def retry_interval(self) -> timedelta:
        return timedelta(seconds=self.retry_interval_seconds or DEFAULT_RETRY_INTERVAL_SECONDS)


@dataclass(frozen=True)
class LatestTask:
    """What the schedule needs of an app's latest task (and what GetApp shows)."""

    id: str
    status: TaskStatus
    verdict: str
    created_at: datetime
    finished_at: datetime | None
    s3_key: str


@dataclass(frozen=True)
class App:
    id: str
    name: str
    app_config_type: AppConfigType
    contract_address: str
    model_or_domain: str
    verification_flags: VerificationFlags
    expected_compose_hash: str
    schedule: Schedule
    state: AppState
    schedule_paused: bool
    source: AppSource
    created_at: datetime
    updated_at: datetime
    latest: LatestTask | None = None


@dataclass(frozen=True)
class AppFilter:
    state: AppState | None = None
    app_config_type: AppConfigType | None = None


# The fields UpdateApp may change (AIP-134 update_mask paths).
UPDATABLE = frozenset(
    {
        "name",
        "contract_address",
        "model_or_domain",
        "verification_flags",
        "expected_compose_hash",
        "schedule",
        "state",
        "app_config_type",
    }
)


def next_run(app: App, now: datetime) -> datetime | None:
    """When the scheduler creates the app's next task; None while it is not
    scheduled (disabled, deleted, paused) or its latest task still runs."""
    if app.state is not AppState.ENABLED or app.schedule_paused:
        return None
    latest = app.latest
    if latest is None:
        if app.schedule.cron:
            return cron_next(app.schedule.cron, app.created_at - timedelta(minutes=1))
        return app.created_at
    if not latest.status.finished:
        return None
    if app.schedule.cron:
        # The first cron time after the latest task was created.
        return cron_next(app.schedule.cron, latest.created_at)
    finished = latest.finished_at or latest.created_at
    if latest.status is TaskStatus.COMPLETED:
        return finished + app.schedule.interval
    return finished + app.schedule.retry_interval


def is_due(app: App, now: datetime) -> bool:
    when = next_run(app, now)
    return when is not None and when <= now


def cron_next(expression: str, after: datetime) -> datetime:
    """The first time strictly after `after` the expression names (UTC)."""
    result = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    assert isinstance(result, datetime)
    return result if result.tzinfo else result.replace(tzinfo=UTC)


def scheduled_request_id(app: App) -> str:
    """The idempotency key of the app's next scheduled task: one per (app, latest task)."""
    previous = app.latest.id if app.latest is not None else "first"
    # Hashed: an app id may be as long as a request id may be.
    return "schedule:" + hashlib.sha256(f"{app.id}\n{previous}".encode()).hexdigest()


def task_for(app: App, request_id: str | None) -> NewTask:
    """The task that verifies the app."""
    return NewTask(
        request_id=request_id,
        app_id=app.id,
        app_name=app.name,
        app_config_type=app.app_config_type,
        contract_address=app.contract_address,
        model_or_domain=app.model_or_domain,
        app_metadata={"scheduledBy": SCHEDULER},
        verification_flags=app.verification_flags,
        evidence=None,
        expected_compose_hash=app.expected_compose_hash,
        evaluation_time=None,
        created_by=SCHEDULER,
    )


# --- validation -------------------------------------------------------------------------


def validate_schedule(schedule: Schedule) -> Schedule:
    for name in ("interval_seconds", "retry_interval_seconds"):
        value = getattr(schedule, name)
        if value is not None and not MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS:
            raise InvalidArgument(
                f"schedule.{name}",
                f"between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS} seconds, got {value}",
            )
    cron = schedule.cron.strip()
    if len(cron) > MAX_CRON:
        raise InvalidArgument("schedule.cron", f"at most {MAX_CRON} characters")
    if cron and (len(cron.split()) != 5 or not croniter.is_valid(cron)):
        raise InvalidArgument(
            "schedule.cron", f"expected five cron fields in UTC such as '0 */6 * * *', got {cron!r}"
        )
    return replace(schedule, cron=cron)


def validate_app(app: App) -> App:
    """Every bound and format of an app, the offending field named."""
    if not app.id:
        raise InvalidArgument("app.id", "required")
    validation.validate_app_id(app.id, "app.id")
    task = validation.validate_new_task(
        request_id="",
        app_id=app.id,
        app_name=app.name,
        app_config_type=app.app_config_type,
        contract_address=app.contract_address,
        model_or_domain=app.model_or_domain,
        app_metadata={},
        verification_flags=app.verification_flags.to_dict(),
        evidence=None,
        expected_compose_hash=app.expected_compose_hash,
        evaluation_time=None,
    )
    return replace(
        app,
        contract_address=task.contract_address,
        expected_compose_hash=task.expected_compose_hash,
        verification_flags=task.verification_flags,
        schedule=validate_schedule(app.schedule),
    )


def apply_update(current: App, given: App, paths: frozenset[str], now: datetime) -> App:
    """`current` with the fields named in `paths` taken from `given` (all when empty)."""
    unknown = sorted(paths - UPDATABLE)
    if unknown:
        raise InvalidArgument(
            "update_mask",
            f"cannot update {unknown[0]!r}; updatable: {', '.join(sorted(UPDATABLE))}",
        )
    chosen = paths or UPDATABLE
    changes: dict[str, Any] = {name: getattr(given, name) for name in chosen}
    updated = replace(current, **changes, updated_at=now)
    return validate_app(updated)


def flags_or_defaults(given: Mapping[str, bool | None] | None) -> VerificationFlags:
    return validation.flags_with_defaults(given)


# --- page tokens (opaque: base64 of the last id and a hash of the filters) ---------------


def _fingerprint(app_filter: AppFilter) -> str:
    canonical = "|".join(
        [
            app_filter.state.value if app_filter.state else "",
            app_filter.app_config_type.value if app_filter.app_config_type else "",
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(last_id: str, app_filter: AppFilter) -> str:
    raw = json.dumps({"v": 1, "i": last_id, "f": _fingerprint(app_filter)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, app_filter: AppFilter) -> str | None:
    """The last id of the previous page (None for an empty token)."""
    if not token:
        return None
    try:
        if len(token) > 512:
            raise ValueError("too long")
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(body, dict) or body.get("v") != 1 or not isinstance(body.get("i"), str):
            raise ValueError("malformed")
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument(
            "page_token", "malformed; pass the next_page_token of the previous page"
        ) from None
    if body.get("f") != _fingerprint(app_filter):
        raise InvalidArgument("page_token", "was issued for other filters; keep them between pages")
    return str(body["i"])
