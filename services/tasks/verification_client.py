"""The verification service as the tasks service uses it: only its published
signing key (VerificationService.GetSigningKey), to check signed summaries.
The channel is created lazily, inside the running loop, by the shared factory
(so the service-identity credentials apply)."""

from __future__ import annotations

import grpc
from verifier.verification.v1 import verification_pb2, verification_pb2_grpc

from shared.errors import Unavailable
from shared.grpc_client import create_channel


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
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None

    async def fetch(self) -> tuple[str, bytes]:
        """(key id, raw public key) of the key that signs reports and summaries."""
        if self._channel is None:
            self._channel = create_channel(self.target, self.credentials)
        stub = verification_pb2_grpc.VerificationServiceStub(self._channel)
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
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
