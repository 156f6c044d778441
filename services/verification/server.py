"""The verification service's gRPC surface: parse the request, call the
service, map the result (mapping.py). Domain errors raised below are mapped to
status codes by the shared bootstrap; per-item statuses of VerifyTasks by
mapping.item_status.

- VerificationService (public): GetReport, GetSigningKey.
- VerificationEngineService (internal, the project's own services only):
  Verify, VerifyTasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from verifier.verification.v1 import engine_pb2, engine_pb2_grpc, verification_pb2_grpc
from verifier.verification.v1 import verification_pb2 as pb

from shared.ids import canonical_task_id
from shared.principal import current_identity

from . import mapping
from .access import ReportAccess
from .key_history import KeyHistory
from .service import VerificationService
from .token import attestation_token, jwk

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VerificationService"].full_name
ENGINE_SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["VerificationEngineService"].full_name


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    def __init__(
        self,
        service: VerificationService,
        key_history: KeyHistory | None = None,
        access: ReportAccess | None = None,
    ) -> None:
        self.service = service
        self.key_history = key_history
        # Owner check of a submitter's GetReport (None: every caller sees every report).
        self.access = access

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportResponse:
        canonical_task_id(request.task_id, "task_id")
        if self.access is not None:
            await self.access.check(request.task_id, current_identity())
        stored = await self.service.get_report(request.task_id, request.attempt)
        response = mapping.report_response(stored, self.service.bucket)
        response.attestation_token = attestation_token(
            json.loads(stored.body), stored.body, self.service.signing_key, datetime.now(UTC)
        )
        return response

    async def GetJwks(
        self, request: pb.GetJwksRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJwksResponse:
        current = self.service.key_info.public_key
        earlier = await asyncio.to_thread(self.key_history.public_keys) if self.key_history else []
        keys = [current, *(k for k in earlier if k != current)]
        return pb.GetJwksResponse(keys=[pb.JsonWebKey(**jwk(k)) for k in keys])

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


class VerificationEngineServicer(engine_pb2_grpc.VerificationEngineServiceServicer):
    def __init__(self, service: VerificationService) -> None:
        self.service = service

    async def Verify(
        self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyResponse:
        stored = await self.service.verify(mapping.request_from_proto(request), request.attempt)
        summary = mapping.summary_to_proto(stored)
        return pb.VerifyResponse(
            summary=summary,
            signed_summary=mapping.signed_summary(
                summary, self.service.sign, self.service.key_info.key_id
            ),
        )

    async def VerifyTasks(
        self, request: engine_pb2.VerifyTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.VerifyTasksResponse]:
        leases = mapping.leases_from_proto(request)
        async for lease, result in self.service.verify_tasks(leases):
            yield mapping.verify_tasks_response(
                lease, result, self.service.sign, self.service.key_info.key_id
            )

    async def DeleteReports(
        self, request: engine_pb2.DeleteReportsRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.DeleteReportsResponse:
        task_ids = mapping.delete_reports_from_proto(request)
        results = await self.service.delete_reports(task_ids)
        return mapping.delete_reports_response(task_ids, results)
