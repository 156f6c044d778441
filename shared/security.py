"""Wiring of authentication from the settings: what a service's server needs
(authorizer, certificates, internal port) and the channels a service opens to
its peers' internal ports (mutual TLS with its own certificate)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from shared import errors
from shared.auth import Authorizer, CachedValidator, Lookup, RateRules
from shared.config import CommonSettings as Settings
from shared.grpc_client import create_channel
from shared.log import get_logger
from shared.principal import KIND_KEY, Identity
from shared.ratelimit import BucketRule, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from shared.tls import CertPaths, channel_credentials

log = get_logger(__name__)

# Which service's internal port each peer name reaches (workers are the queue's).
_INTERNAL_ADDR = {
    "tasks": "tasks_internal_addr",
    "queue": "queue_internal_addr",
    "verification": "verification_internal_addr",
}


@dataclass
class Security:
    """A server's authentication: given to ServiceSpec.security."""

    authorizer: Authorizer
    certs: CertPaths
    internal_listen_addr: str
    public_tls: bool
    environment: str = "development"
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def certs_for(settings: Settings, name: str) -> CertPaths:
    paths = CertPaths.of(settings.effective_tls_dir, name)
    if not paths.exist():
        raise FileNotFoundError(
            f"no certificate for {name} in {settings.effective_tls_dir} "
            "(run `make certs`, or set TLS_DIR)"
        )
    return paths


def rate_limiter(settings: Settings) -> RateLimiter:
    """In Redis when configured (shared by replicas), else in this process."""
    redis_url = str(getattr(settings, "redis_url", ""))
    return RedisRateLimiter(redis_url) if redis_url else MemoryRateLimiter()


def rate_rules(settings: Settings) -> RateRules:
    return RateRules(
        create=BucketRule(settings.rate_limit_create_per_second, settings.rate_limit_create_burst),
        read=BucketRule(settings.rate_limit_read_per_second, settings.rate_limit_read_burst),
    )


def service_security(
    settings: Settings, name: str, lookup: Lookup | None = None
) -> Security | None:
    """The security of service `name`, None when AUTH_ENABLED is off. Without a
    `lookup` (every service but tasks), keys are validated by asking the tasks
    service's IdentityService over its internal port."""
    if not settings.auth_enabled:
        return None
    certs = certs_for(settings, name)
    on_stop: list[Callable[[], Awaitable[None]]] = []
    if lookup is None:
        remote = RemoteLookup(settings, name)
        lookup = remote
        on_stop.append(remote.close)
    limiter = rate_limiter(settings)
    on_stop.append(limiter.close)
    validator = CachedValidator(lookup, ttl=settings.identity_cache_seconds)
    return Security(
        authorizer=Authorizer(validator, limiter, rate_rules(settings)),
        certs=certs,
        internal_listen_addr=getattr(settings, f"{name}_internal_listen_addr"),
        public_tls=settings.tls_public,
        environment=settings.environment,
        on_stop=on_stop,
    )


def internal_channel(settings: Settings, peer: str, me: str) -> grpc.aio.Channel:
    """A channel to `peer`'s internal RPCs: its mutual-TLS port with `me`'s
    certificate, or (AUTH_ENABLED off) its plain public address."""
    if not settings.auth_enabled:
        return create_channel(getattr(settings, f"{peer}_addr"))
    creds = channel_credentials(certs_for(settings, me))
    return create_channel(getattr(settings, _INTERNAL_ADDR[peer]), credentials=creds)


def internal_credentials(settings: Settings, me: str) -> grpc.ChannelCredentials | None:
    """`me`'s mutual-TLS credentials for a peer's internal port (None: auth off)."""
    if not settings.auth_enabled:
        return None
    creds: Any = channel_credentials(certs_for(settings, me))
    return creds


def internal_target(settings: Settings, peer: str) -> str:
    if not settings.auth_enabled:
        return str(getattr(settings, f"{peer}_addr"))
    return str(getattr(settings, _INTERNAL_ADDR[peer]))


def public_channel_credentials(settings: Settings, me: str) -> grpc.ChannelCredentials | None:
    """Credentials for the peers' public ports: TLS trusting our CA when
    TLS_PUBLIC is set with authentication on (as the servers listen), None
    (plaintext) otherwise."""
    if not (settings.auth_enabled and settings.tls_public):
        return None
    creds: Any = channel_credentials(
        CertPaths.of(settings.effective_tls_dir, me), client_cert=False
    )
    return creds


class RemoteLookup:
    """Asks the tasks service's IdentityService whether a key is valid."""

    def __init__(self, settings: Settings, me: str, timeout: float = 3.0) -> None:
        self._settings = settings
        self._me = me
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def __call__(self, token: str) -> Identity | None:
        from verifier.tasks.v1 import identity_pb2, identity_pb2_grpc

        if self._stub is None:
            self._channel = internal_channel(self._settings, "tasks", self._me)
            self._stub = identity_pb2_grpc.IdentityServiceStub(self._channel)
        try:
            reply = await self._stub.ValidateApiKey(
                identity_pb2.ValidateApiKeyRequest(secret=token), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("identity.unreachable", code=exc.code().name)
            raise errors.Unavailable("cannot validate the API key now; retry later") from None
        if not reply.valid:
            return None
        return Identity(
            KIND_KEY, reply.name, reply.owner, frozenset(reply.scopes), reply.key_id, token
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
