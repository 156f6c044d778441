"""Proto <-> domain mapping: enums, flags presence, summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2
from verifier.tasks.v1 import tasks_pb2
from verifier.verification.v1 import verification_pb2

from services.tasks import mapping
from services.tasks.model import AppConfigType, TaskStatus
from shared.errors import InvalidArgument


def test_every_task_status_maps_both_ways() -> None:
    for status in TaskStatus:
        assert mapping.status_from_proto(mapping.status_to_proto(status)) is status
    assert mapping.status_from_proto(tasks_pb2.TASK_STATUS_UNSPECIFIED) is None


def test_unknown_enum_numbers_are_invalid_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        mapping.status_from_proto(99)
    assert caught.value.field == "status"
    with pytest.raises(InvalidArgument) as caught:
        mapping.app_config_type_from_proto(99)
    assert caught.value.field == "app_config_type"
    with pytest.raises(InvalidArgument) as caught:
        mapping.view_from_proto(7)
    assert caught.value.field == "view"


def test_app_config_types_map_to_reference_values() -> None:
    assert mapping.app_config_type_from_proto(verification_pb2.APP_CONFIG_TYPE_REDPILL) is (
        AppConfigType.REDPILL
    )
    assert AppConfigType.PHALA_CLOUD.value == "phala_cloud"


def test_only_flags_the_client_set_are_taken() -> None:
    flags = verification_pb2.VerificationFlags(os=False, dns_caa=True)
    assert mapping.flags_from_proto(flags) == {
        "hardware": None,
        "os": False,
        "source_code": None,
        "tee_controlled_key": None,
        "certificate_key": None,
        "dns_caa": True,
        "ct_log": None,
    }


def test_create_request_without_type_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        mapping.new_task_from_proto(tasks_pb2.CreateTaskRequest(app_id="a"))
    assert caught.value.field == "app_config_type"


def test_summary_maps_checks_and_rejects_unspecified_ones() -> None:
    summary = verification_pb2.ReportSummary(verdict=verification_pb2.VERDICT_PASSED)
    summary.checks.add(
        check=verification_pb2.CHECK_OS, status=verification_pb2.CHECK_STATUS_PASSED, reason="ok"
    ).details.update({"mrtd": "ab"})
    domain = mapping.summary_from_proto(summary)
    assert domain.verdict == "passed"
    assert domain.checks[0].check == "os" and domain.checks[0].details == {"mrtd": "ab"}
    summary.checks.add(check=verification_pb2.CHECK_UNSPECIFIED)
    with pytest.raises(InvalidArgument) as caught:
        mapping.summary_from_proto(summary)
    assert caught.value.field == "summary.checks[1].check"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 5, 10, 50, 3, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
        datetime(2026, 3, 5, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 3, 5, 10, 50, 3),  # naive: UTC
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_time_to_proto_equals_protobufs_own_conversion(moment: datetime) -> None:
    ours, theirs = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    mapping.time_to_proto(moment, ours)
    theirs.FromDatetime(moment)
    assert (ours.seconds, ours.nanos) == (theirs.seconds, theirs.nanos)
    assert 0 <= ours.nanos < 1_000_000_000
