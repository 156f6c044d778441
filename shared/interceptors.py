"""The shape of the project's server interceptors (grpc_server's request
context, metrics' series): each wraps the handler of a unary call and of a
server-streaming call, the two kinds the services serve, and keeps the
handler's (de)serializers. Other handlers pass through unwrapped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# A unary handler and a server-streaming handler, as grpc.aio calls them.
Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """Override `wrap_unary` and `wrap_stream` (called once per call, with its
    details); the default leaves the handler as it is."""

    def wrap_unary(self, inner: Any, details: grpc.HandlerCallDetails) -> Unary:
        wrapped: Unary = inner
        return wrapped

    def wrap_stream(self, inner: Any, details: grpc.HandlerCallDetails) -> Stream:
        wrapped: Stream = inner
        return wrapped

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(handler.unary_unary, handler_call_details),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(handler.unary_stream, handler_call_details),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
