"""Validation of the tasks domain: every bound names its field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.tasks import validation
from services.tasks.model import AppConfigType, CheckResult, ReportSummary, VerificationFlags
from shared.errors import InvalidArgument


def _new(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "request_id": "",
        "app_id": "app-1",
        "app_name": "demo",
        "app_config_type": AppConfigType.REDPILL,
        "contract_address": "",
        "model_or_domain": "model-x",
        "app_metadata": None,
        "verification_flags": None,
        "evidence": None,
        "expected_compose_hash": "",
        "evaluation_time": None,
    }
    fields.update(overrides)
    return validation.validate_new_task(**fields)


def _field_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        call(*args, **kwargs)
    return caught.value.field


def test_defaults_are_the_reference_systems_flags() -> None:
    task = _new()
    assert task.verification_flags == VerificationFlags(
        hardware=True,
        os=True,
        source_code=True,
        tee_controlled_key=True,
        certificate_key=True,
        dns_caa=False,
        ct_log=False,
    )
    assert task.job_name == "verify:redpill"
    assert task.request_id is None and task.evidence is None and task.app_metadata == {}


def test_flags_given_override_only_those_defaults() -> None:
    flags = validation.flags_with_defaults({"os": False, "ct_log": True, "hardware": None})
    assert flags.enabled() == [
        "hardware",
        "source_code",
        "tee_controlled_key",
        "certificate_key",
        "ct_log",
    ]


def test_flags_that_disable_every_check_are_invalid() -> None:
    given = dict.fromkeys(VerificationFlags().to_dict(), False)
    assert _field_of(validation.flags_with_defaults, given) == "verification_flags"


@pytest.mark.parametrize(
    "given",
    [
        {"hardware": False},
        {"hardware": False, "os": False},
        {"hardware": False, "source_code": False},
    ],
    ids=["os_and_source_code", "source_code", "os"],
)
def test_os_or_source_code_without_hardware_is_invalid(given: dict[str, bool]) -> None:
    # Measurements from a quote nobody verified prove nothing (issue 11).
    with pytest.raises(InvalidArgument) as caught:
        validation.flags_with_defaults(given)
    assert caught.value.field == "verification_flags"
    assert "verificationFlags" in caught.value.message and "need hardware" in caught.value.message


def test_key_checks_alone_without_hardware_are_allowed() -> None:
    given = {"hardware": False, "os": False, "source_code": False}
    assert validation.flags_with_defaults(given).enabled() == [
        "tee_controlled_key",
        "certificate_key",
    ]


def test_missing_app_config_type_is_invalid() -> None:
    assert _field_of(_new, app_config_type=None) == "app_config_type"


@pytest.mark.parametrize(
    "address", ["0x123", "0x" + "g" * 40, "ab" * 20, "0x" + "a" * 41, " 0x" + "a" * 40]
)
def test_malformed_contract_address_is_invalid(address: str) -> None:
    assert _field_of(_new, contract_address=address) == "contract_address"


def test_contract_address_is_stored_lowercase() -> None:
    assert _new(contract_address="0x" + "AB" * 20).contract_address == "0x" + "ab" * 20


@pytest.mark.parametrize("app_id", ["a b", "a/b", "é", "x" * 129])
def test_bad_app_id_is_invalid(app_id: str) -> None:
    assert _field_of(_new, app_id=app_id) == "app_id"


def test_request_id_over_128_characters_is_invalid() -> None:
    assert _field_of(_new, request_id="r" * 129) == "request_id"
    assert _new(request_id="r" * 128).request_id == "r" * 128


def test_metadata_over_16_kib_is_invalid() -> None:
    assert _field_of(_new, app_metadata={"k": "v" * 16 * 1024}) == "app_metadata"
    assert _new(app_metadata={"k": "v" * 1000}).app_metadata == {"k": "v" * 1000}


@pytest.mark.parametrize(
    ("evidence", "field"),
    [
        ({"quote": "ab" * (32 * 1024 + 1)}, "evidence.quote"),
        ({"quote": "xyz"}, "evidence.quote"),
        ({"quote": "abc"}, "evidence.quote"),
        # Whitespace, a trailing newline, non-ASCII digits: not hex text.
        ({"quote": "abc\n"}, "evidence.quote"),
        ({"quote": "ab cd"}, "evidence.quote"),
        ({"quote": "ab\u0661\u0662"}, "evidence.quote"),
        ({"event_log": "[]"}, "evidence.quote"),
        ({"quote": "ab", "event_log": "e" * (1024 * 1024 + 1)}, "evidence.event_log"),
        ({"quote": "ab", "vm_config": "v" * (64 * 1024 + 1)}, "evidence.vm_config"),
        ({"quote": "ab", "app_compose": "c" * (256 * 1024 + 1)}, "evidence.app_compose"),
        ({"quote": "ab", "certificate_chain": "c" * (64 * 1024 + 1)}, "evidence.certificate_chain"),
        ({"quote": "ab", "collateral": "c" * (256 * 1024 + 1)}, "evidence.collateral"),
        ({"quote": "ab", "report_data": "zz"}, "evidence.report_data"),
    ],
)
def test_evidence_out_of_bounds_names_the_evidence_field(
    evidence: dict[str, str], field: str
) -> None:
    assert _field_of(_new, evidence=evidence) == field


def test_empty_evidence_is_no_evidence() -> None:
    assert _new(evidence={"quote": "", "event_log": ""}).evidence is None
    assert _new(evidence={"quote": "0xABcd"}).evidence == {"quote": "0xABcd"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"app_config_type": AppConfigType.PHALA_CLOUD, "app_id": "app-1"}, "app_id"),
        ({"app_config_type": AppConfigType.PHALA_CLOUD, "app_id": ""}, "app_id"),
        ({"app_config_type": AppConfigType.REDPILL, "model_or_domain": ""}, "model_or_domain"),
        ({"app_config_type": AppConfigType.REDPILL, "model_or_domain": "a b"}, "model_or_domain"),
    ],
)
def test_a_task_its_source_cannot_fetch_is_refused_at_creation(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _new(**overrides)
    assert caught.value.field == field
    assert "inline" in caught.value.message  # says the way out


def test_with_inline_evidence_the_source_needs_no_fetch_key() -> None:
    task = _new(app_config_type=AppConfigType.PHALA_CLOUD, app_id="app-1", evidence={"quote": "ab"})
    assert task.app_id == "app-1" and task.evidence == {"quote": "ab"}
    cloud = _new(app_config_type=AppConfigType.PHALA_CLOUD, app_id="0x" + "Ab" * 20)
    assert cloud.app_id == "0x" + "Ab" * 20 and cloud.evidence is None


@pytest.mark.parametrize("value", ["abc", "g" * 64, "a" * 63, "a" * 65])
def test_compose_hash_must_be_64_hex_digits(value: str) -> None:
    assert _field_of(_new, expected_compose_hash=value) == "expected_compose_hash"


def test_compose_hash_is_normalised() -> None:
    assert _new(expected_compose_hash="0x" + "AB" * 32).expected_compose_hash == "ab" * 32


def test_evaluation_time_out_of_range_is_invalid() -> None:
    assert _field_of(_new, evaluation_time=datetime(1970, 1, 2, tzinfo=UTC)) == "evaluation_time"


@pytest.mark.parametrize("size", [-1, 501])
def test_page_size_out_of_range_is_invalid(size: int) -> None:
    assert _field_of(validation.validate_page_size, size) == "page_size"


def test_page_size_zero_means_the_default() -> None:
    assert validation.validate_page_size(0) == 50
    assert validation.validate_page_size(500) == 500


@pytest.mark.parametrize("progress", [-1, 101])
def test_progress_out_of_range_is_invalid(progress: int) -> None:
    assert _field_of(validation.validate_progress, progress) == "progress"


def test_time_window_must_be_ordered() -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    late = datetime(2026, 2, 1, tzinfo=UTC)
    assert validation.validate_time_window(early, late) == (early, late)
    assert _field_of(validation.validate_time_window, late, early) == "created_before"


def test_task_id_must_be_a_canonical_lowercase_uuid() -> None:
    assert _field_of(validation.validate_task_id, "x") == "id"
    assert _field_of(validation.validate_task_id, "") == "id"
    # One spelling on every route (issue 12): uppercase and braces are refused.
    assert _field_of(validation.validate_task_id, "0BAD0000-0000-4000-8000-000000000000") == "id"
    assert _field_of(validation.validate_task_id, "{0bad0000-0000-4000-8000-000000000000}") == "id"
    assert (
        validation.validate_task_id("0bad0000-0000-4000-8000-000000000000")
        == "0bad0000-0000-4000-8000-000000000000"
    )


def test_error_message_is_required_and_bounded() -> None:
    assert _field_of(validation.validate_error_message, "  ") == "error_message"
    assert _field_of(validation.validate_error_message, "e" * 4097) == "error_message"


def test_summary_with_a_check_twice_is_invalid() -> None:
    twice = ReportSummary(
        verdict="passed", checks=(CheckResult("os", "passed"), CheckResult("os", "failed"))
    )
    assert _field_of(validation.validate_summary, twice) == "summary.checks[1].check"
    assert _field_of(validation.validate_summary, ReportSummary(verdict="")) == "summary.verdict"
    assert _field_of(validation.validate_summary, None) == "summary"
