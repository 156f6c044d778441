"""Protos of AppService to and from the apps domain (validation stays in the domain)."""

from __future__ import annotations

from datetime import UTC, datetime

from verifier.tasks.v1 import apps_pb2

from shared.errors import InvalidArgument

from . import mapping
from .apps import UPDATABLE, App, AppFilter, AppSource, AppState, Schedule
from .model import AppConfigType
from .validation import flags_with_defaults

_STATE_TO_PROTO: dict[AppState, apps_pb2.AppState.ValueType] = {
    AppState.ENABLED: apps_pb2.APP_STATE_ENABLED,
    AppState.DISABLED: apps_pb2.APP_STATE_DISABLED,
    AppState.DELETED: apps_pb2.APP_STATE_DELETED,
}
_STATE_FROM_PROTO = {number: state for state, number in _STATE_TO_PROTO.items()}
_SOURCE_TO_PROTO: dict[AppSource, apps_pb2.AppSource.ValueType] = {
    AppSource.API: apps_pb2.APP_SOURCE_API,
    AppSource.PHALA_CLOUD: apps_pb2.APP_SOURCE_PHALA_CLOUD,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def state_from_proto(value: apps_pb2.AppState.ValueType, field: str = "state") -> AppState | None:
    if value == apps_pb2.APP_STATE_UNSPECIFIED:
        return None
    state = _STATE_FROM_PROTO.get(value)
    if state is None:
        raise InvalidArgument(field, f"unknown app state {value}")
    return state


def app_from_proto(
    message: apps_pb2.App, *, for_update: bool = False
) -> tuple[App, frozenset[str]]:
    """The app the client sent, and which of its enum fields (state,
    app_config_type) it left unset: an update keeps those as they are."""
    kind = mapping.app_config_type_from_proto(message.app_config_type, "app.app_config_type")
    state = state_from_proto(message.state, "app.state")
    flags = (
        mapping.flags_from_proto(message.verification_flags)
        if message.HasField("verification_flags")
        else None
    )
    schedule = message.schedule
    app = App(
        id=message.id,
        name=message.name,
        app_config_type=kind or AppConfigType.PHALA_CLOUD,
        contract_address=message.contract_address,
        model_or_domain=message.model_or_domain,
        verification_flags=flags_with_defaults(flags),
        expected_compose_hash=message.expected_compose_hash,
        schedule=Schedule(
            interval_seconds=schedule.interval_seconds or None,
            retry_interval_seconds=schedule.retry_interval_seconds or None,
            cron=schedule.cron,
        ),
        state=state or AppState.ENABLED,
        schedule_paused=False,
        source=AppSource.API,
        created_at=_EPOCH,
        updated_at=_EPOCH,
    )
    if kind is None and not for_update:
        raise InvalidArgument("app.app_config_type", "required: redpill or phala_cloud")
    unset = {"state"} if state is None else set()
    if kind is None:
        unset.add("app_config_type")
    return app, frozenset(unset)


def update_paths(mask_paths: list[str], unset: frozenset[str]) -> frozenset[str]:
    """The fields an UpdateApp changes: the mask's, else every settable field but
    the enums the client left unset."""
    if mask_paths:
        return frozenset(path.removeprefix("app.") for path in mask_paths)
    return UPDATABLE - unset


def filter_from_proto(request: apps_pb2.ListAppsRequest) -> AppFilter:
    return AppFilter(
        state=state_from_proto(request.state),
        app_config_type=mapping.app_config_type_from_proto(request.app_config_type),
    )


def app_to_proto(app: App, next_run: datetime | None) -> apps_pb2.App:
    message = apps_pb2.App(
        id=app.id,
        name=app.name,
        app_config_type=mapping.app_config_type_to_proto(app.app_config_type),
        contract_address=app.contract_address,
        model_or_domain=app.model_or_domain,
        expected_compose_hash=app.expected_compose_hash,
        schedule=apps_pb2.Schedule(
            interval_seconds=app.schedule.interval_seconds or 0,
            retry_interval_seconds=app.schedule.retry_interval_seconds or 0,
            cron=app.schedule.cron,
        ),
        state=_STATE_TO_PROTO[app.state],
        schedule_paused=app.schedule_paused,
        source=_SOURCE_TO_PROTO[app.source],
    )
    mapping.flags_to_proto(app.verification_flags, message.verification_flags)
    if app.latest is not None:
        message.latest_task_id = app.latest.id
        message.latest_task_status = mapping.status_to_proto(app.latest.status)
        message.latest_verdict = mapping.verdict_to_proto(app.latest.verdict)
        message.latest_report_key = app.latest.s3_key
        mapping.time_to_proto(app.latest.finished_at, message.latest_finished_at)
    mapping.time_to_proto(next_run, message.next_run_at)
    mapping.time_to_proto(app.created_at, message.create_time)
    mapping.time_to_proto(app.updated_at, message.update_time)
    return message
