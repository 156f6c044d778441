"""The verification service as the tasks service uses it: its published
signing key (VerificationService.GetSigningKey), to check signed summaries, and
the deletion of a task's reports for retention (VerificationEngineService.
DeleteReports, internal). The channels are created lazily, inside the running
loop, by the shared factory (so the service-identity credentials apply)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import code_pb2
from verifier.verification.v1 import (
    engine_pb2,
    engine_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)

from shared.errors import Unavailable
from shared.grpc_client import LazyChannel
from shared.log import get_logger

log = get_logger(__name__)
# DeleteReports takes at most this many tasks a call.
DELETE_BATCH = 500


class SigningKeyClient:
    def __init__(
        self,
        target: str,
        timeout_seconds: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        # mutual TLS to the verification service's internal port: the key that
        # checks verdicts comes from the service whose certificate says so.
        self._channel = LazyChannel(target, credentials)

    async def fetch(self) -> tuple[str, bytes]:
        """(key id, raw public key) of the key that signs reports and summaries."""
        stub = verification_pb2_grpc.VerificationServiceStub(self._channel.get())
        try:
            response = await stub.GetSigningKey(
                verification_pb2.GetSigningKeyRequest(), timeout=self.timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"verification {self.target}: {exc.code().name} {exc.details()}"
            ) from None
        try:
            raw = bytes.fromhex(response.public_key)
        except ValueError:
            raise Unavailable("the verification service's public key is not hex") from None
        return response.key_id, raw

    async def close(self) -> None:
        await self._channel.close()


class ReportDeleter:
    """VerificationEngineService.DeleteReports for retention: the tasks whose
    reports (all attempts) are gone, in batches of at most 500."""

    def __init__(
        self,
        target: str,
        timeout_seconds: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        # Internal: mutual TLS to the verification service's internal port.
        self._channel = LazyChannel(target, credentials)

    async def delete(self, task_ids: Sequence[str]) -> dict[str, int]:
        """Task id -> reports deleted, for the tasks whose reports are all gone;
        a task missing from the answer still has reports (the store failed: the
        caller keeps its row for the next pass). Raises Unavailable when the
        service cannot be asked at all."""
        stub = engine_pb2_grpc.VerificationEngineServiceStub(self._channel.get())
        done: dict[str, int] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), DELETE_BATCH):
            request = engine_pb2.DeleteReportsRequest(task_ids=ids[start : start + DELETE_BATCH])
            try:
                reply = await stub.DeleteReports(request, timeout=self.timeout_seconds)
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(
                    f"verification {self.target}: DeleteReports {exc.code().name} {exc.details()}"
                ) from None
            for item in reply.tasks:
                if item.status.code == code_pb2.OK:
                    done[item.task_id] = item.deleted
                else:
                    log.warning(
                        "retention.reports_kept", task_id=item.task_id, error=item.status.message
                    )
        return done

    async def close(self) -> None:
        await self._channel.close()
