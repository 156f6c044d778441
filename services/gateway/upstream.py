"""Channels to the gRPC services and generic calls built from descriptors.

One channel per target, opened inside the running loop (the app's lifespan).
Each RPC gets a cached multicallable made with `channel.unary_unary` /
`channel.unary_stream` and the message classes' (de)serializers, so no
generated stub is needed: the descriptors say everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import grpc

from services.gateway.catalog import Rpc
from services.gateway.errors import BadTimeout
from shared.grpc_client import CHANNEL_OPTIONS


class Upstreams:
    """The gateway's channels, keyed like the catalog's targets ("tasks", ...)."""

    def __init__(
        self, targets: Mapping[str, str], credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.targets = dict(targets)
        # TLS to the services' public ports when they serve it (TLS_PUBLIC).
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[str, Any] = {}

    def open(self) -> None:
        """Create the channels; call inside the running event loop."""
        # The request id is passed explicitly per call, so the channels need no
        # interceptor (grpc.aio interceptors cost a task per call).
        for key, target in self.targets.items():
            if self.credentials is not None:
                self._channels[key] = grpc.aio.secure_channel(
                    target, self.credentials, options=CHANNEL_OPTIONS
                )
            else:
                self._channels[key] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    async def close(self, grace: float | None = None) -> None:
        for channel in self._channels.values():
            await channel.close(grace)
        self._channels.clear()
        self._callables.clear()

    def channel(self, key: str) -> grpc.aio.Channel:
        return self._channels[key]

    def callable_for(self, rpc: Rpc) -> Any:
        """The multicallable of an RPC (unary-unary or unary-stream)."""
        found = self._callables.get(rpc.path)
        if found is None:
            channel = self._channels[rpc.target]
            factory = channel.unary_stream if rpc.server_streaming else channel.unary_unary
            found = factory(
                rpc.path,
                request_serializer=rpc.request_class.SerializeToString,
                response_deserializer=rpc.response_class.FromString,
            )
            self._callables[rpc.path] = found
        return found


_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_HUMAN_TIMEOUT = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s)?$")


def parse_timeout(headers: Mapping[str, str], ceiling: float) -> float:
    """The call's timeout in seconds: X-Timeout ("2.5", "2.5s", "500ms") or grpc-timeout
    ("500m", gRPC's format), never above `ceiling` (the server's setting)."""
    timeout = ceiling
    text = headers.get("x-timeout")
    if text is not None:
        found = _HUMAN_TIMEOUT.match(text.strip())
        if found is None or float(found.group(1)) <= 0:
            raise BadTimeout("X-Timeout", text)
        value = float(found.group(1))
        timeout = min(timeout, value / 1000 if found.group(2) == "ms" else value)
    text = headers.get("grpc-timeout")
    if text is not None:
        found = _GRPC_TIMEOUT.match(text.strip())
        if found is None or int(found.group(1)) == 0:
            raise BadTimeout("grpc-timeout", text)
        timeout = min(timeout, int(found.group(1)) * _GRPC_UNITS[found.group(2)])
    return timeout
