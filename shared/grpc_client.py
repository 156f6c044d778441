"""gRPC client channels that carry the request id to the next service.

Create channels inside the running event loop (grpc.aio binds them to it).
RPC-level retries are declared here once, as the channel's service config:
UNAVAILABLE is retried by gRPC itself for the idempotent methods listed below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from shared.context import REQUEST_ID_METADATA_KEY, current_request_id, new_request_id

# Methods safe to send again after UNAVAILABLE (the peer restarting or not up
# yet): reads, and writes the contract makes idempotent (EnqueueTask is keyed by
# the task; pausing a paused queue changes nothing). Creating, cancelling and the
# worker's calls are not here: their callers own those retries.
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "verifier.tasks.v1.TaskService": (
        "GetTask",
        "ListTasks",
        "GetTaskStats",
        "WatchTask",
        "ListTaskEvents",
    ),
    "verifier.queue.v1.QueueService": (
        "EnqueueTask",
        "GetQueueStatus",
        "PauseQueue",
        "ResumeQueue",
        "ListWorkers",
    ),
    "verifier.verification.v1.VerificationService": ("GetReport", "GetSigningKey"),
    "verifier.ops.v1.DiagnosticsService": ("CheckDependencies",),
    "grpc.health.v1.Health": ("Check",),
}

# gRPC retries these itself (with its own jittered backoff), within the call's
# deadline; the throttle stops retries when most calls fail, so an outage does
# not multiply the load on a peer that is coming back.
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(methods: Mapping[str, tuple[str, ...]] = IDEMPOTENT_METHODS) -> str:
    """The channel's service config (JSON): RETRY_POLICY on each listed method."""
    names = [
        {"service": service, "method": method}
        for service, service_methods in methods.items()
        for method in service_methods
    ]
    config = {
        "methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    return json.dumps(config, separators=(",", ":"))


CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Reconnect quickly after a peer restarts instead of backing off for minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", service_config()),
]


def _with_request_id(
    details: grpc.aio.ClientCallDetails, authorization: str
) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    if not any(key == REQUEST_ID_METADATA_KEY for key, _ in metadata):
        metadata.append((REQUEST_ID_METADATA_KEY, current_request_id() or new_request_id()))
    if authorization and not any(key == "authorization" for key, _ in metadata):
        metadata.append(("authorization", authorization))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, authorization: str) -> None:
        self.authorization = authorization

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_request_id(details, self.authorization), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, authorization: str) -> None:
        self.authorization = authorization

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_request_id(details, self.authorization), request)


def create_channel(
    target: str, credentials: grpc.ChannelCredentials | None = None, api_key: str = ""
) -> grpc.aio.Channel:
    """A channel to a peer service that forwards the request id: TLS with
    `credentials` (shared.security builds them), else plaintext. With `api_key`,
    every call carries `authorization: Bearer <api_key>` (clients, tests, benches)."""
    authorization = f"Bearer {api_key}" if api_key else ""
    interceptors = [_UnaryUnary(authorization), _UnaryStream(authorization)]
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


class LazyChannel:
    """A client's channel to one peer, opened on first use: a grpc.aio channel
    belongs to the running event loop, and clients are built before it runs.
    `close` closes it (a later call opens a new one)."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None

    def get(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = create_channel(self.target, self.credentials)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def health_serving(
    target: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 1.0
) -> bool:
    """Whether grpc.health.v1 at `target` answers SERVING: a blocking check for
    whatever waits for a process to come up (the `make run` launcher, test stacks).
    TLS with `credentials` (a public port under TLS_PUBLIC), else plaintext."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
