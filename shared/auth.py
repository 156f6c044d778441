"""Who may call what: the access policy of every RPC, and the check the
server interceptor (shared.grpc_server) runs before each handler.

Three kinds of caller:
- a peer service, by its certificate from the project's CA (it came through
  the mutual-TLS internal port: the public port never asks for a certificate);
- an API key, `authorization: Bearer <key>`, validated by the identity
  service (the tasks service; other services ask it and cache the answer);
- nobody: allowed only on the open methods (health, reflection, diagnostics).

The policy table below is the one place that says what each RPC needs. A
method with no rule is refused, so a new RPC is closed until someone says
who may call it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared import errors
from shared.principal import (
    SCOPE_ADMIN,
    SCOPE_QUEUE,
    SCOPE_READ,
    SCOPE_SUBMIT,
    Identity,
)
from shared.ratelimit import BucketRule, RateLimiter, retry_after_seconds

AUTHORIZATION_METADATA_KEY = "authorization"
# The form of our keys; anything else is refused without a lookup.
KEY_PREFIX = "vk_"
MAX_KEY_LENGTH = 128
WWW_AUTHENTICATE = 'Bearer realm="tee-verifier"'

BUCKET_CREATE = "create"
BUCKET_READ = "read"


@dataclass(frozen=True)
class Rule:
    """What one RPC needs: nothing (open), a service certificate (internal), or
    an API key with any one of `scopes` (admin implies every scope)."""

    scopes: frozenset[str] = frozenset()
    internal: bool = False
    open: bool = False
    # The caller's token bucket this call draws from ("" = none).
    bucket: str = ""
    # How many tokens a call draws, from its request (None: one a call).
    cost: Callable[[Any], int] | None = None

    def tokens(self, request: Any) -> int:
        return 1 if self.cost is None or request is None else self.cost(request)


OPEN = Rule(open=True)
INTERNAL = Rule(internal=True)


def needs(*scopes: str, bucket: str = "", cost: Callable[[Any], int] | None = None) -> Rule:
    return Rule(scopes=frozenset(scopes), bucket=bucket, cost=cost)


def per_item(request: Any) -> int:
    """A batch call costs one token per item (`requests`), as that many calls
    would: a batch is not a way around the create limit."""
    return len(getattr(request, "requests", ()))


_TASKS = "/verifier.tasks.v1.TaskService/"
_QUEUE = "/verifier.queue.v1.QueueService/"
_VERIFICATION = "/verifier.verification.v1.VerificationService/"
_OS_IMAGES = "/verifier.verification.v1.OsImageService/"
_APPS = "/verifier.tasks.v1.AppService/"
_OPERATIONS = "/verifier.tasks.v1.TaskOperationsService/"

# Exact methods first; then whole services by prefix (below).
POLICY: dict[str, Rule] = {
    # A submitter creates and cancels its own tasks and reads them; tasks.read
    # reads every task. Which tasks a caller sees is the tasks service's filter.
    _TASKS + "CreateTask": needs(SCOPE_SUBMIT, bucket=BUCKET_CREATE),
    # One token per call, as CreateTask (at most 100 tasks a call).
    _TASKS + "BatchCreateTasks": needs(SCOPE_SUBMIT, bucket=BUCKET_CREATE, cost=per_item),
    _TASKS + "CancelTask": needs(SCOPE_SUBMIT, bucket=BUCKET_READ),
    _TASKS + "GetTask": needs(SCOPE_SUBMIT, SCOPE_READ, bucket=BUCKET_READ),
    _TASKS + "ListTasks": needs(SCOPE_SUBMIT, SCOPE_READ, bucket=BUCKET_READ),
    _TASKS + "WatchTask": needs(SCOPE_SUBMIT, SCOPE_READ, bucket=BUCKET_READ),
    _TASKS + "ListTaskEvents": needs(SCOPE_SUBMIT, SCOPE_READ, bucket=BUCKET_READ),
    # Counts over every task: not a submitter's business.
    _TASKS + "GetTaskStats": needs(SCOPE_READ, bucket=BUCKET_READ),
    _QUEUE + "EnqueueTask": INTERNAL,
    _QUEUE + "GetQueueStatus": needs(SCOPE_QUEUE, SCOPE_READ, bucket=BUCKET_READ),
    _QUEUE + "ListWorkers": needs(SCOPE_QUEUE, bucket=BUCKET_READ),
    _QUEUE + "PauseQueue": needs(SCOPE_QUEUE),
    _QUEUE + "ResumeQueue": needs(SCOPE_QUEUE),
    # Job actions: operators (the dashboard's readers see the counts, not the jobs).
    _QUEUE + "ListJobs": needs(SCOPE_QUEUE, bucket=BUCKET_READ),
    _QUEUE + "GetJob": needs(SCOPE_QUEUE, bucket=BUCKET_READ),
    _QUEUE + "DiscardJob": needs(SCOPE_QUEUE),
    _QUEUE + "PromoteJob": needs(SCOPE_QUEUE),
    _VERIFICATION + "Verify": INTERNAL,
    # Owner-filtered by the verification service (it asks the tasks service).
    _VERIFICATION + "GetReport": needs(SCOPE_SUBMIT, SCOPE_READ, bucket=BUCKET_READ),
    # The public key that checks reports offline: anyone may have it.
    _VERIFICATION + "GetSigningKey": OPEN,
    _VERIFICATION + "GetJwks": OPEN,
    # OS reference values: any client may read them; changing them is an operator's.
    _OS_IMAGES + "ListOsImages": needs(SCOPE_SUBMIT, SCOPE_READ, SCOPE_QUEUE, bucket=BUCKET_READ),
    _OS_IMAGES + "GetOsImage": needs(SCOPE_SUBMIT, SCOPE_READ, SCOPE_QUEUE, bucket=BUCKET_READ),
    _OS_IMAGES + "CreateOsImage": needs(SCOPE_ADMIN),
    _OS_IMAGES + "DeleteOsImage": needs(SCOPE_ADMIN),
    # Apps re-verified on schedules: readers see them, operators run the
    # schedules, admins change what is watched.
    _APPS + "GetApp": needs(SCOPE_READ, bucket=BUCKET_READ),
    _APPS + "ListApps": needs(SCOPE_READ, bucket=BUCKET_READ),
    _APPS + "ListAppTasks": needs(SCOPE_READ, bucket=BUCKET_READ),
    _APPS + "ListSchedules": needs(SCOPE_READ, SCOPE_QUEUE, bucket=BUCKET_READ),
    _APPS + "PauseSchedule": needs(SCOPE_QUEUE),
    _APPS + "ResumeSchedule": needs(SCOPE_QUEUE),
    _APPS + "TriggerSchedule": needs(SCOPE_QUEUE, bucket=BUCKET_CREATE),
    _APPS + "CreateApp": needs(SCOPE_ADMIN),
    _APPS + "UpdateApp": needs(SCOPE_ADMIN),
    _APPS + "DeleteApp": needs(SCOPE_ADMIN),
    _APPS + "SyncApps": needs(SCOPE_ADMIN),
    # Job actions on tasks (operators): retries, the dead letters, retention.
    _OPERATIONS + "RetryTask": needs(SCOPE_QUEUE),
    _OPERATIONS + "RetryFailedTasks": needs(SCOPE_QUEUE),
    _OPERATIONS + "ListDeadLetters": needs(SCOPE_QUEUE, SCOPE_READ, bucket=BUCKET_READ),
    _OPERATIONS + "RunRetention": needs(SCOPE_ADMIN),
    _OPERATIONS + "ListRetentionAudit": needs(SCOPE_QUEUE, SCOPE_READ, bucket=BUCKET_READ),
}

SERVICE_POLICY: dict[str, Rule] = {
    "/grpc.health.v1.Health/": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/": OPEN,
    "/grpc.reflection.v1.ServerReflection/": OPEN,
    "/verifier.ops.v1.DiagnosticsService/": OPEN,
    "/verifier.tasks.v1.ApiKeyService/": needs(SCOPE_ADMIN),
    "/verifier.tasks.v1.IdentityService/": INTERNAL,
    "/verifier.tasks.v1.TaskWorkerService/": INTERNAL,
    "/verifier.tasks.v1.QueueStateService/": INTERNAL,
    "/verifier.queue.v1.QueueIntakeService/": INTERNAL,
    "/verifier.verification.v1.VerificationEngineService/": INTERNAL,
}


def rule_for(method: str) -> Rule | None:
    """The rule of a full method name ("/pkg.Service/Method"), None if it has none."""
    rule = POLICY.get(method)
    if rule is not None:
        return rule
    service = method[: method.rfind("/") + 1]
    return SERVICE_POLICY.get(service)


# --- errors (mapped to status codes in shared.grpc_server) -----------------------------


class MissingCredentials(errors.Unauthenticated):
    def __init__(self) -> None:
        super().__init__("an API key is required: send `authorization: Bearer <key>`")


class InvalidCredentials(errors.Unauthenticated):
    def __init__(self) -> None:
        super().__init__("the API key is not valid (unknown, malformed or revoked)")


class ScopeMissing(errors.PermissionDenied):
    def __init__(self, method: str, rule: Rule) -> None:
        wanted = " or ".join(sorted(rule.scopes))
        super().__init__(f"{method.rsplit('/', 1)[-1]} needs the scope {wanted}")


class InternalOnly(errors.PermissionDenied):
    def __init__(self, method: str) -> None:
        super().__init__(
            f"{method.rsplit('/', 1)[-1]} is internal: only the project's services may call it, "
            "with their certificate (mutual TLS)"
        )


class NoPolicy(errors.PermissionDenied):
    def __init__(self, method: str) -> None:
        super().__init__(f"no access rule for {method} (shared/auth.py POLICY)")


class RateLimited(errors.ResourceExhausted):
    def __init__(self, bucket: str, retry_after: int) -> None:
        super().__init__(f"rate limit for {bucket} calls exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


# --- key validation ----------------------------------------------------------------------

Lookup = Callable[[str], Awaitable[Identity | None]]


def bearer_token(metadata: Mapping[str, Any]) -> str:
    """The token of `authorization: Bearer <token>`, or ""."""
    value = metadata.get(AUTHORIZATION_METADATA_KEY)
    if not isinstance(value, str):
        return ""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def well_formed(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and len(token) <= MAX_KEY_LENGTH and token.isascii()


class CachedValidator:
    """Validates tokens through `lookup`, remembering answers for `ttl` seconds
    (unknown tokens for less), one lookup at a time per token."""

    def __init__(
        self,
        lookup: Lookup,
        ttl: float,
        negative_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 50_000,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = min(ttl, negative_ttl)
        self._clock = clock
        self._max = max_entries
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._inflight: dict[str, asyncio.Future[Identity | None]] = {}

    async def validate(self, token: str) -> Identity | None:
        if not well_formed(token):
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return _with_token(hit[1], token)
        pending = self._inflight.get(digest)
        if pending is not None:
            return _with_token(await asyncio.shield(pending), token)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            identity = await self._lookup(token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            self._inflight.pop(digest, None)
        future.set_result(identity)
        if len(self._cache) >= self._max:
            self._cache.clear()
        ttl = self._ttl if identity is not None else self._negative_ttl
        self._cache[digest] = (self._clock() + ttl, identity)
        return _with_token(identity, token)

    def forget_all(self) -> None:
        """Drop every cached answer (after a revocation in this process)."""
        self._cache.clear()


def _with_token(identity: Identity | None, token: str) -> Identity | None:
    if identity is None or identity.token == token:
        return identity
    return Identity(
        identity.kind, identity.principal, identity.owner, identity.scopes, identity.key_id, token
    )


# --- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateRules:
    create: BucketRule
    read: BucketRule

    def of(self, bucket: str) -> BucketRule:
        return self.create if bucket == BUCKET_CREATE else self.read


class Authorizer:
    """Resolves and checks the caller of one RPC. `peer_service` is the common
    name of a verified peer certificate, or ""."""

    def __init__(
        self,
        validator: CachedValidator,
        limiter: RateLimiter | None = None,
        rates: RateRules | None = None,
    ) -> None:
        self.validator = validator
        self.limiter = limiter
        self.rates = rates

    async def authorize(
        self,
        method: str,
        metadata: Mapping[str, Any],
        peer_service: Callable[[], str],
        request: Any = None,
    ) -> Identity | None:
        """The caller's identity (None on an open method), or a domain error.
        `request` (unary calls) sets what a call draws from its bucket."""
        rule = rule_for(method)
        if rule is None:
            raise NoPolicy(method)
        if rule.open:
            return None
        if rule.internal:
            service = peer_service()
            if not service:
                raise InternalOnly(method)
            return Identity.service(service)
        token = bearer_token(metadata)
        if token:
            identity = await self.validator.validate(token)
            if identity is None:
                raise InvalidCredentials
        else:
            service = peer_service()
            if not service:
                raise MissingCredentials
            return Identity.service(service)
        if not identity.has_any(rule.scopes):
            raise ScopeMissing(method, rule)
        if rule.bucket and self.limiter is not None and self.rates is not None:
            wait = await self.limiter.take(
                f"{identity.key_id}:{rule.bucket}",
                self.rates.of(rule.bucket),
                rule.tokens(request),
            )
            if wait > 0:
                raise RateLimited(rule.bucket, retry_after_seconds(wait))
        return identity


def peer_common_name(auth_context: Mapping[str, Any]) -> str:
    """The verified peer certificate's common name from a grpc auth context, or ""."""
    names = auth_context.get("x509_common_name") or ()
    for name in names:
        text = name.decode() if isinstance(name, bytes) else str(name)
        if text:
            return text
    return ""
