"""gRPC client channels that carry the request id to the next service.

Create channels inside the running event loop (grpc.aio binds them to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from shared.context import REQUEST_ID_METADATA_KEY, current_request_id, new_request_id

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Reconnect quickly after a peer restarts instead of backing off for minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 1),
]


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    if not any(key == REQUEST_ID_METADATA_KEY for key, _ in metadata):
        metadata.append((REQUEST_ID_METADATA_KEY, current_request_id() or new_request_id()))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_request_id(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_request_id(details), request)


def create_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to a peer service that forwards the request id."""
    return grpc.aio.insecure_channel(
        target, options=CHANNEL_OPTIONS, interceptors=[_UnaryUnary(), _UnaryStream()]
    )
