"""The trust chain of a Phala Cloud app (its instances, KMS and gateway), from
responses of the API's shape (see phala_recorded.py for what stands in for what)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from services.verification.chain import ratls_report_data, with_fetched
from services.verification.collateral import CollateralStore
from services.verification.engine import VerificationEngine
from services.verification.errors import EvidenceMalformed
from services.verification.model import (
    CheckStatus,
    Evidence,
    Report,
    VerificationFlags,
    VerificationRequest,
)
from services.verification.phala_cloud import attestations_url, parse_system_info

from .phala_recorded import (
    GATEWAY_APP_ID,
    VECTOR,
    SyntheticChain,
    guest_agent_info,
    instance,
    new_spki,
    passing_chain,
    vector_system_info,
)
from .support import APP_ID, AT_90C06F, COMPOSE_HASH, DCAP, HW_OS_SRC

HW_SRC = VerificationFlags.only(["hardware", "source_code"])


def _request(doc: dict[str, Any], **changes: Any) -> VerificationRequest:
    task = VerificationRequest(
        evidence=Evidence(quote=b""),
        evaluated_at=AT_90C06F,
        task_id="chain-1",
        app_id=APP_ID,
        app_config_type="phala_cloud",
        flags=HW_OS_SRC,
        expected_compose_hash=COMPOSE_HASH,
    )
    return replace(with_fetched(task, parse_system_info(doc, APP_ID)), **changes)


@pytest.fixture(scope="module")
def real_engine() -> VerificationEngine:
    # Real dcap-qvl, collateral picked by FMSPC from the vectors' folder.
    return VerificationEngine(collateral_store=CollateralStore(local_dir=DCAP))


def _by_part(report: Report) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in report.part_checks:
        out.setdefault(r.part, {})[r.name] = r
    return out


def test_the_path_is_added_once_to_the_bare_base() -> None:
    assert (
        attestations_url("https://cloud-api.phala.com/", "ab")
        == "https://cloud-api.phala.com/api/v1/apps/ab/attestations"
    )


# ---- real quotes (the public vector) for every part


def test_every_running_instance_kms_and_gateway_are_verified(
    real_engine: VerificationEngine,
) -> None:
    report = real_engine.verify(_request(vector_system_info()))
    parts = _by_part(report)
    assert list(parts) == ["kms", "app/instance:i-1", "app/instance:i-2", "gateway"]
    for part in parts.values():
        assert part["hardware"].status is CheckStatus.PASSED, part["hardware"].reason
    # The KMS and the gateway report their vm_config; an API instance does not
    # (its VM shape comes from the app's own Info endpoint, with a domain).
    for name in ("kms", "gateway"):
        assert parts[name]["os"].status is CheckStatus.PASSED, parts[name]["os"].reason
    assert "cannot tell which OS image booted" in parts["app/instance:i-1"]["os"].reason
    # KMS and gateway: the compose in the response must hash to their compose-hash
    # event; the recorded one is not the vector's preimage.
    for name in ("kms", "gateway"):
        assert "differs from sha256 of the app-compose text" in parts[name]["source_code"].reason
    # The vector's key provider is local-sgx: the app does not use this KMS.
    app = parts["app/instance:i-1"]["source_code"]
    assert app.status is CheckStatus.FAILED
    assert "names 'local-sgx', not the KMS" in app.reason
    assert report.verdict == "failed"
    summary = report.check("source_code")
    assert summary.status is CheckStatus.FAILED and "kms: " in summary.reason
    assert report.check("hardware").status is CheckStatus.PASSED
    assert report.check("hardware").details["parts"]["gateway"] == "passed"
    assert [p["part"] for p in report.parts] == list(parts)
    assert report.to_dict()["part_checks"][0]["part"] == "kms"


def test_an_app_with_no_running_instance_fails_with_that_reason(
    real_engine: VerificationEngine,
) -> None:
    doc = vector_system_info(instances=[{"quote": None}, {"quote": ""}])
    report = real_engine.verify(_request(doc))
    app = _by_part(report)["app"]
    assert {r.status for r in app.values()} == {CheckStatus.FAILED}
    assert "no running instance" in app["hardware"].reason
    assert report.verdict == "failed"


def test_a_response_without_kms_or_gateway_is_an_error_for_them(
    real_engine: VerificationEngine,
) -> None:
    report = real_engine.verify(_request(vector_system_info(kms=None, gateway=None)))
    parts = _by_part(report)
    assert parts["kms"]["hardware"].status is CheckStatus.ERROR
    assert "no kms_guest_agent_info" in parts["kms"]["hardware"].reason
    assert "no gateway_guest_agent_info" in parts["gateway"]["source_code"].reason
    assert report.verdict == "failed"


def test_a_kms_without_any_certificate_quote_cannot_be_verified(
    real_engine: VerificationEngine,
) -> None:
    doc = vector_system_info(kms=guest_agent_info("kms", "{}", quote=None))
    parts = _by_part(real_engine.verify(_request(doc)))
    assert parts["kms"]["hardware"].status is CheckStatus.ERROR
    assert "no certificate entry that carries a quote" in parts["kms"]["hardware"].reason


# ---- the response parsed as the API returns it


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(instances={"a": 1}), "instances"),
        (lambda d: d["instances"][0].update(quote=5), "instances[0].quote"),
        (lambda d: d["instances"][0].update(quote="zz"), "instances[0].quote"),
        (lambda d: d["instances"][0].update(eventlog={"x": 1}), "instances[0].eventlog"),
        (
            lambda d: d["instances"][0]["eventlog"][3].update(imr="0"),
            "instances[0].eventlog[3].imr",
        ),
        (
            lambda d: d["instances"][2]["tcb_info"].update(app_compose=7),
            "instances[2].tcb_info.app_compose",
        ),
        (lambda d: d["kms_info"].update(gateway_app_id=1), "kms_info.gateway_app_id"),
        (lambda d: d.update(kms_guest_agent_info=[]), "kms_guest_agent_info"),
        (
            lambda d: d["kms_guest_agent_info"].update(tcb_info=None),
            "kms_guest_agent_info.tcb_info",
        ),
        (
            lambda d: d["gateway_guest_agent_info"]["app_certificates"][0].update(quote=["x"]),
            "gateway_guest_agent_info.app_certificates[0].quote",
        ),
        (
            lambda d: d["gateway_guest_agent_info"].update(vm_config="[1]"),
            "gateway_guest_agent_info.vm_config",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_named(change: Any, field: str) -> None:
    doc = copy.deepcopy(vector_system_info())
    change(doc)
    with pytest.raises(EvidenceMalformed) as caught:
        parse_system_info(doc, APP_ID)
    assert caught.value.field == field


def test_both_event_log_places_and_the_0x_quote_are_read() -> None:
    doc = vector_system_info(
        instances=[instance("0x" + VECTOR["quote"]), instance(new_format=True)]
    )
    chain = parse_system_info(doc, APP_ID)
    assert [p.part for p in chain.instances] == ["app/instance:0", "app/instance:1"]
    assert all(p.evidence.event_log and p.evidence.quote for p in chain.instances)
    assert chain.gateway is not None and chain.gateway.expected_app_id == GATEWAY_APP_ID


# ---- the links, on parts whose event logs we write (SyntheticChain)


def test_a_whole_chain_passes_with_a_pinned_kms_key() -> None:
    chain, key = SyntheticChain(), new_spki()
    engine = chain.engine(trusted_kms_ca_pubkeys=(key.hex(),))
    report = engine.verify(
        _request(passing_chain(chain, key, bind_key=False), expected_compose_hash="", flags=HW_SRC)
    )
    assert report.verdict == "passed", [r.reason for r in report.part_checks if not r.passed]
    app = _by_part(report)["app/instance:i-1"]["source_code"]
    assert "is pinned" in app.details["kms_link"]
    assert report.chain["trusted_kms_ca_pubkeys"] == {
        key.hex(): app.details["kms_link"].split(" ", 4)[-1]
    }


def test_a_kms_key_bound_by_the_kms_certificate_quote_is_trusted() -> None:
    chain, key = SyntheticChain(), new_spki()
    report = chain.engine().verify(
        _request(passing_chain(chain, key, bind_key=True), expected_compose_hash="", flags=HW_SRC)
    )
    assert report.verdict == "passed", [r.reason for r in report.part_checks if not r.passed]
    link = _by_part(report)["app/instance:i-2"]["source_code"].details["kms_link"]
    assert "bound by the verified quote of a KMS certificate" in link


def test_a_kms_key_neither_bound_nor_pinned_is_an_error_not_a_pass() -> None:
    chain, key = SyntheticChain(), new_spki()
    engine = chain.engine(trusted_kms_ca_pubkeys=(new_spki().hex(),))  # another key
    report = engine.verify(
        _request(passing_chain(chain, key, bind_key=False), expected_compose_hash="", flags=HW_SRC)
    )
    source = _by_part(report)["app/instance:i-1"]["source_code"]
    assert source.status is CheckStatus.ERROR
    assert "app-to-KMS link cannot be established" in source.reason
    assert report.verdict == "failed"
    assert report.check("source_code").status is CheckStatus.ERROR
    assert "app/instance:i-1: app-to-KMS link" in report.check("source_code").reason


def test_a_kms_quote_that_is_not_acceptable_cannot_vouch_for_the_key() -> None:
    chain, key = SyntheticChain(), new_spki()
    doc = passing_chain(chain, key, bind_key=True)
    # The same KMS quote, now rated OutOfDate: the hardware policy refuses it.
    kms_report = ratls_report_data(key).hex()
    chain.status[kms_report] = "OutOfDate"
    report = chain.engine().verify(_request(doc, expected_compose_hash="", flags=HW_SRC))
    parts = _by_part(report)
    assert parts["kms"]["hardware"].status is CheckStatus.FAILED
    assert parts["app/instance:i-1"]["source_code"].status is CheckStatus.ERROR


def test_the_gateway_must_attest_kms_info_gateway_app_id() -> None:
    chain, key = SyntheticChain(), new_spki()
    doc = passing_chain(chain, key, bind_key=True)
    doc["kms_info"]["gateway_app_id"] = "b" * 40
    report = chain.engine().verify(_request(doc, expected_compose_hash="", flags=HW_SRC))
    gateway = _by_part(report)["gateway"]["source_code"]
    assert gateway.status is CheckStatus.FAILED
    assert (
        f"app-id event ({GATEWAY_APP_ID}) differs from the expected app id ({'b' * 40})"
        in gateway.reason
    )
    assert report.verdict == "failed"


def test_kms_info_without_gateway_app_id_is_an_error_for_the_gateway() -> None:
    chain, key = SyntheticChain(), new_spki()
    doc = passing_chain(chain, key, bind_key=True)
    doc["kms_info"]["gateway_app_id"] = ""
    report = chain.engine().verify(_request(doc, expected_compose_hash="", flags=HW_SRC))
    gateway = _by_part(report)["gateway"]["source_code"]
    assert gateway.status is CheckStatus.ERROR and "names no gateway_app_id" in gateway.reason


def test_one_failing_instance_fails_the_chain() -> None:
    chain, key = SyntheticChain(), new_spki()
    doc = passing_chain(chain, key, bind_key=True)
    doc["instances"][1]["tcb_info"]["app_compose"] = '{"app":2}'  # not what it measured
    report = chain.engine().verify(_request(doc, expected_compose_hash="", flags=HW_SRC))
    parts = _by_part(report)
    assert parts["app/instance:i-1"]["source_code"].status is CheckStatus.PASSED
    assert parts["app/instance:i-2"]["source_code"].status is CheckStatus.FAILED
    assert report.verdict == "failed"
    assert report.check("source_code").reason.startswith("app/instance:i-2: compose-hash event")
