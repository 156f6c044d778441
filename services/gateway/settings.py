"""Settings of the REST gateway (loaded by shared.config: environment over TOML
over defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config import CommonSettings, ConfigError, positive, setting


def _check_port(value: int) -> None:
    if not 0 <= value < 65536:
        raise ValueError(f"expected a port in 0-65535, got {value}")


def origin_problem(origins: tuple[str, ...]) -> str | None:
    """Why CORS_ALLOW_ORIGINS is unusable, or None. Browsers send an Origin of
    scheme://host[:port] and nothing else; a path or a missing scheme never
    matches, and "*" means any origin, so it stands alone."""
    if "*" in origins and len(origins) > 1:
        return '"*" allows every origin; list origins or "*" alone'
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"expected scheme://host[:port], got {origin!r}"
        if parts.path or parts.query or parts.fragment or parts.username is not None:
            return f"an origin has no path, query or credentials, got {origin!r}"
    return None


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    """What the REST gateway is configured with (its upstreams are CommonSettings'
    <service>_addr)."""

    # The gateway's listen host and port (0: the OS chooses, for tests).
    host: str = "0.0.0.0"
    port: int = setting(3000, check=_check_port)
    max_body_bytes: int = positive(4 * 1024 * 1024)
    # Longest a server-streaming call (SSE, e.g. :watch) runs; clients reconnect after.
    stream_timeout_seconds: float = positive(3600.0)
    # Seconds between SSE keep-alive comments, so proxies keep idle streams open.
    sse_keepalive_seconds: float = positive(15.0)
    # Seconds /health/detailed waits for each service's health and diagnostics.
    health_timeout_seconds: float = positive(3.0)
    # Origins a browser may call the REST API from (CORS); empty: none, "*": any.
    cors_allow_origins: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        problem = origin_problem(self.cors_allow_origins)
        if problem is not None:
            raise ConfigError("cors_allow_origins", problem)
