"""The gRPC surface of the identity module the tasks service hosts:
ApiKeyService (admin scope, on the gateway) and IdentityService.ValidateApiKey
(internal, for the other services' key checks)."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2
from verifier.tasks.v1 import identity_pb2, identity_pb2_grpc

from shared.auth import CachedValidator
from shared.log import get_logger
from shared.principal import current_identity

from .identity import ApiKeyRecord, validate_key_id, validate_new_key
from .keys_store import KeyStore

log = get_logger(__name__)

API_KEY_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
IDENTITY_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def key_to_proto(record: ApiKeyRecord) -> identity_pb2.ApiKey:
    return identity_pb2.ApiKey(
        id=record.id,
        name=record.name,
        owner=record.owner,
        scopes=list(record.scopes),
        prefix=record.prefix,
        create_time=_ts(record.created_at),
        last_used_time=_ts(record.last_used_at),
        revoke_time=_ts(record.revoked_at),
    )


class ApiKeyServicer(identity_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, store: KeyStore, validator: CachedValidator | None) -> None:
        self.store = store
        self.validator = validator

    async def CreateApiKey(
        self, request: identity_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CreateApiKeyResponse:
        new = validate_new_key(request.name, request.owner, list(request.scopes))
        record, secret = await self.store.create(new)
        log.info(
            "api_key.created",
            key_id=record.id,
            owner=record.owner,
            scopes=list(record.scopes),
            by=current_identity().principal,
        )
        return identity_pb2.CreateApiKeyResponse(key=key_to_proto(record), secret=secret)

    async def ListApiKeys(
        self, request: identity_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ListApiKeysResponse:
        records = await self.store.list(include_revoked=request.include_revoked)
        return identity_pb2.ListApiKeysResponse(keys=[key_to_proto(r) for r in records])

    async def RevokeApiKey(
        self, request: identity_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RevokeApiKeyResponse:
        record = await self.store.revoke(validate_key_id(request.id))
        if self.validator is not None:
            self.validator.forget_all()  # this process stops accepting it at once
        log.info("api_key.revoked", key_id=record.id, by=current_identity().principal)
        return identity_pb2.RevokeApiKeyResponse(key=key_to_proto(record))


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def ValidateApiKey(
        self, request: identity_pb2.ValidateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.ValidateApiKeyResponse:
        identity = await self.store.lookup(request.secret)
        if identity is None:
            return identity_pb2.ValidateApiKeyResponse(valid=False)
        return identity_pb2.ValidateApiKeyResponse(
            valid=True,
            key_id=identity.key_id,
            owner=identity.owner,
            scopes=sorted(identity.scopes),
            name=identity.principal,
        )
