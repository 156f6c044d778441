"""VerificationService's gRPC surface: parse the request, call the service, map
the result. Domain errors raised below are mapped to status codes by the
shared bootstrap."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from verifier.verification.v1 import verification_pb2 as pb
from verifier.verification.v1 import verification_pb2_grpc

from shared.attestation import EVIDENCE_FIELDS

from .errors import EvidenceMalformed
from .evidence import evidence_from_dict
from .model import CHECK_ORDER, CheckStatus, Evidence, VerificationFlags, VerificationRequest
from .report import signing_key_id
from .service import StoredVerification, VerificationService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VerificationService"].full_name

_APP_CONFIG_TYPES: dict[int, Any] = {
    pb.APP_CONFIG_TYPE_UNSPECIFIED: "",
    pb.APP_CONFIG_TYPE_REDPILL: "redpill",
    pb.APP_CONFIG_TYPE_PHALA_CLOUD: "phala_cloud",
}
_CHECKS = {name: pb.Check.Value(f"CHECK_{name.upper()}") for name in CHECK_ORDER}
_CHECK_STATUSES = {
    CheckStatus.PASSED: pb.CHECK_STATUS_PASSED,
    CheckStatus.FAILED: pb.CHECK_STATUS_FAILED,
    CheckStatus.SKIPPED: pb.CHECK_STATUS_SKIPPED,
    CheckStatus.ERROR: pb.CHECK_STATUS_ERROR,
}
# Evidence fields beside the quote (which is required and mapped on its own).
_EVIDENCE_FIELDS = tuple(name for name in EVIDENCE_FIELDS if name != "quote")


def flags_from_proto(flags: pb.VerificationFlags) -> VerificationFlags:
    """Unset flags take the defaults (the domain dataclass's)."""
    defaults = VerificationFlags()
    values: dict[str, bool] = {}
    for name in CHECK_ORDER:
        is_set = flags.HasField(name)  # type: ignore[arg-type]
        values[name] = getattr(flags if is_set else defaults, name)
    return VerificationFlags(**values)


def evidence_from_proto(evidence: pb.Evidence) -> Evidence:
    if not evidence.quote:
        if any(getattr(evidence, name) for name in _EVIDENCE_FIELDS):
            raise EvidenceMalformed("evidence.quote", "missing: inline evidence needs the quote")
        return Evidence(quote=b"")
    doc: dict[str, Any] = {"quote": evidence.quote}
    for name in _EVIDENCE_FIELDS:
        value = getattr(evidence, name)
        if value:
            doc[name] = value
    return evidence_from_dict(doc)


def request_from_proto(
    request: pb.VerifyRequest, now: datetime | None = None
) -> VerificationRequest:
    app_config_type = _APP_CONFIG_TYPES.get(request.app_config_type)
    if app_config_type is None:
        raise EvidenceMalformed("app_config_type", f"unknown value {request.app_config_type}")
    evaluated_at = (
        request.evaluation_time.ToDatetime(tzinfo=UTC)
        if request.HasField("evaluation_time")
        else now or datetime.now(UTC)
    )
    compose_hash = request.expected_compose_hash.lower().removeprefix("0x")
    if compose_hash and (
        len(compose_hash) != 64 or any(c not in "0123456789abcdef" for c in compose_hash)
    ):
        raise EvidenceMalformed("expected_compose_hash", "expected 64 hex digits (sha256)")
    return VerificationRequest(
        evidence=evidence_from_proto(request.evidence),
        evaluated_at=evaluated_at,
        task_id=request.task_id,
        app_id=request.app_id,
        app_config_type=app_config_type,
        model_or_domain=request.model_or_domain,
        contract_address=request.contract_address,
        flags=flags_from_proto(request.flags),
        expected_compose_hash=compose_hash,
    )


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if document:
        struct.update(document)
    return struct


def summary_to_proto(stored: StoredVerification) -> pb.ReportSummary:
    report = stored.report
    evaluated_at = timestamp_pb2.Timestamp()
    evaluated_at.FromDatetime(report.evaluated_at)
    return pb.ReportSummary(
        verdict=pb.VERDICT_PASSED if report.passed else pb.VERDICT_FAILED,
        checks=[
            pb.CheckResult(
                check=_CHECKS[check.name],
                status=_CHECK_STATUSES[check.status],
                reason=check.reason,
                details=_struct(check.details),
            )
            for check in report.checks
        ],
        tcb_status=report.tcb_status,
        advisory_ids=list(report.advisory_ids),
        evaluated_at=evaluated_at,
        s3_bucket=stored.bucket,
        s3_key=stored.key,
        s3_filename=stored.filename,
        report_sha256=stored.report_sha256,
        verifier_version=report.verifier_version,
    )


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(self, service: VerificationService) -> None:
        self.service = service

    async def Verify(
        self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyResponse:
        stored = await self.service.verify(request_from_proto(request))
        return pb.VerifyResponse(summary=summary_to_proto(stored))

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportResponse:
        stored = await self.service.get_report(request.task_id)
        document = json.loads(stored.body)
        return pb.GetReportResponse(
            report=_struct(document),
            canonical_json=stored.body.decode("utf-8"),
            signature=stored.signature.hex(),
            # The key the report names, not this replica's current one.
            key_id=signing_key_id(document),
            s3_bucket=self.service.bucket,
            s3_key=stored.key,
        )

    async def GetSigningKey(
        self, request: pb.GetSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSigningKeyResponse:
        info = self.service.key_info
        return pb.GetSigningKeyResponse(
            algorithm="Ed25519",
            public_key=info.public_key.hex(),
            public_key_pem=info.public_key_pem,
            key_id=info.key_id,
        )
