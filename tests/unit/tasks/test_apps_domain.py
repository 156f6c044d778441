"""The apps domain: when an app is due (the reference's rule, intervals, cron), the
exactly-once request id, validation and page tokens."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.tasks import apps
from services.tasks.apps import App, AppFilter, AppSource, AppState, LatestTask, Schedule
from services.tasks.model import AppConfigType, TaskStatus, VerificationFlags
from shared.errors import InvalidArgument

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HEX_ID = "a" * 40


def make_app(**fields: object) -> App:
    app = App(
        id=HEX_ID,
        name="demo",
        app_config_type=AppConfigType.PHALA_CLOUD,
        contract_address="",
        model_or_domain="demo.phala.network",
        verification_flags=VerificationFlags(),
        expected_compose_hash="",
        schedule=Schedule(),
        state=AppState.ENABLED,
        schedule_paused=False,
        source=AppSource.API,
        created_at=NOW - timedelta(days=3),
        updated_at=NOW - timedelta(days=3),
    )
    return replace(app, **fields)  # type: ignore[arg-type]


def latest(status: TaskStatus, finished_ago: timedelta | None) -> LatestTask:
    finished = NOW - finished_ago if finished_ago is not None else None
    return LatestTask(
        id="00000000-0000-0000-0000-000000000001",
        status=status,
        verdict="passed" if status is TaskStatus.COMPLETED else "",
        created_at=(finished or NOW) - timedelta(minutes=1),
        finished_at=finished,
        s3_key="",
    )


def test_an_app_without_a_task_is_due_at_once() -> None:
    assert apps.is_due(make_app(), NOW)


def test_reference_rule_success_waits_24_hours() -> None:
    assert not apps.is_due(make_app(latest=latest(TaskStatus.COMPLETED, timedelta(hours=23))), NOW)
    assert apps.is_due(make_app(latest=latest(TaskStatus.COMPLETED, timedelta(hours=24))), NOW)


def test_reference_rule_failure_waits_30_minutes() -> None:
    assert not apps.is_due(make_app(latest=latest(TaskStatus.FAILED, timedelta(minutes=29))), NOW)
    assert apps.is_due(make_app(latest=latest(TaskStatus.FAILED, timedelta(minutes=30))), NOW)
    assert apps.is_due(make_app(latest=latest(TaskStatus.CANCELLED, timedelta(minutes=31))), NOW)


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.ACTIVE])
def test_an_app_whose_task_runs_is_never_due(status: TaskStatus) -> None:
    app = make_app(latest=latest(status, None))
    assert apps.next_run(app, NOW) is None


def test_own_intervals_replace_the_defaults() -> None:
    schedule = Schedule(interval_seconds=3600, retry_interval_seconds=120)
    done = make_app(schedule=schedule, latest=latest(TaskStatus.COMPLETED, timedelta(minutes=61)))
    failed = make_app(schedule=schedule, latest=latest(TaskStatus.FAILED, timedelta(minutes=1)))
    assert apps.is_due(done, NOW)
    assert not apps.is_due(failed, NOW)
    assert apps.next_run(failed, NOW) == NOW + timedelta(minutes=1)


def test_cron_is_due_at_the_first_time_after_the_latest_task() -> None:
    app = make_app(schedule=Schedule(cron="0 */6 * * *"))
    task = replace(latest(TaskStatus.COMPLETED, timedelta(hours=1)), created_at=NOW.replace(hour=7))
    assert apps.next_run(replace(app, latest=task), NOW) == NOW.replace(hour=12, minute=0)
    assert apps.is_due(replace(app, latest=task), NOW)
    early = replace(task, created_at=NOW.replace(hour=12, minute=0, second=1))
    assert apps.next_run(replace(app, latest=early), NOW) == NOW.replace(hour=18)


@pytest.mark.parametrize(
    "fields",
    [{"state": AppState.DISABLED}, {"state": AppState.DELETED}, {"schedule_paused": True}],
)
def test_disabled_deleted_or_paused_apps_are_not_scheduled(fields: dict[str, object]) -> None:
    assert apps.next_run(make_app(**fields), NOW) is None


def test_request_id_is_the_same_for_the_same_latest_task_and_differs_after() -> None:
    first = apps.scheduled_request_id(make_app())
    assert first == apps.scheduled_request_id(make_app(name="renamed"))
    after = apps.scheduled_request_id(make_app(latest=latest(TaskStatus.COMPLETED, timedelta(0))))
    assert first != after
    assert len(first) <= 128
    assert apps.scheduled_request_id(make_app(id="b" * 128)) != first


def test_scheduled_task_says_it_came_from_the_scheduler() -> None:
    task = apps.task_for(make_app(), "rid")
    assert task.created_by == "scheduler"
    assert task.app_id == HEX_ID
    assert task.request_id == "rid"


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        (Schedule(interval_seconds=10), "schedule.interval_seconds"),
        (Schedule(retry_interval_seconds=10**9), "schedule.retry_interval_seconds"),
        (Schedule(cron="every day"), "schedule.cron"),
        (Schedule(cron="0 0 * * * *"), "schedule.cron"),
    ],
)
def test_bad_schedules_name_the_field(schedule: Schedule, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        apps.validate_app(make_app(schedule=schedule))
    assert caught.value.field == field


def test_a_phala_cloud_app_needs_a_hex_id() -> None:
    with pytest.raises(InvalidArgument) as caught:
        apps.validate_app(make_app(id="not-hex"))
    assert caught.value.field == "app_id"


def test_update_mask_of_an_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        apps.apply_update(make_app(), make_app(), frozenset({"source"}), NOW)
    assert caught.value.field == "update_mask"


def test_update_changes_only_the_masked_fields() -> None:
    given = make_app(name="new", model_or_domain="other.example")
    updated = apps.apply_update(make_app(), given, frozenset({"name"}), NOW)
    assert updated.name == "new"
    assert updated.model_or_domain == "demo.phala.network"
    assert updated.updated_at == NOW


def test_page_token_round_trips_and_is_bound_to_its_filter() -> None:
    token = apps.encode_page_token("abc", AppFilter(state=AppState.ENABLED))
    assert apps.decode_page_token(token, AppFilter(state=AppState.ENABLED)) == "abc"
    with pytest.raises(InvalidArgument):
        apps.decode_page_token(token, AppFilter())
    with pytest.raises(InvalidArgument):
        apps.decode_page_token("%%%", AppFilter())
