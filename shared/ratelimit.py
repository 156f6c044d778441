"""Per-key token buckets: in memory (one process, embedded) or in Redis (shared
by every replica). `take(key)` answers 0 when the call may go ahead, else the
seconds until a token is back (the Retry-After)."""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BucketRule:
    """`rate` tokens a second, at most `burst` saved up; rate 0 means no limit."""

    rate: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def cost_of(self, tokens: int) -> float:
        """What a call of `tokens` items draws: at least 1, at most the burst."""
        return float(min(max(tokens, 1), self.burst))


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def take(self, key: str, rule: BucketRule, tokens: int = 1) -> float:
        """0 when `tokens` were taken, else the seconds until they are back.
        A call never needs more than the burst (it could never go ahead)."""

    async def close(self) -> None:
        return None


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process; the embedded default."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str, rule: BucketRule, tokens: int = 1) -> float:
        if rule.unlimited:
            return 0.0
        cost = rule.cost_of(tokens)
        now = self._clock()
        saved, last = self._buckets.get(key, (float(rule.burst), now))
        saved = min(float(rule.burst), saved + (now - last) * rule.rate)
        if saved >= cost:
            self._remember(key, (saved - cost, now))
            return 0.0
        self._remember(key, (saved, now))
        return (cost - saved) / rule.rate

    def _remember(self, key: str, value: tuple[float, float]) -> None:
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._buckets.pop(next(iter(self._buckets)))  # oldest first: dicts keep order
        self._buckets[key] = value


# One round trip: refill by elapsed time, take a token if there is one. The
# Redis server's clock is the only clock, so replicas agree.
_TAKE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis, so every replica of a service shares one per key. While
    Redis cannot be reached the buckets are this process's own: a Redis outage
    must not stop task creation (the tasks service keeps working without it)."""

    def __init__(self, url: str, prefix: str = "verifier:ratelimit:") -> None:
        import redis.asyncio as aioredis

        self._client: Any = aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._prefix = prefix
        self._script = self._client.register_script(_TAKE)
        self._fallback = MemoryRateLimiter()
        self._down_until = 0.0

    async def take(self, key: str, rule: BucketRule, tokens: int = 1) -> float:
        if rule.unlimited:
            return 0.0
        if time.monotonic() < self._down_until:
            return await self._fallback.take(key, rule, tokens)
        try:
            wait = await self._script(
                keys=[self._prefix + key], args=[rule.rate, rule.burst, rule.cost_of(tokens)]
            )
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._went_down(exc)
            return await self._fallback.take(key, rule, tokens)
        except Exception as exc:  # redis.RedisError and its kin, without importing them here
            if type(exc).__module__.startswith("redis"):
                self._went_down(exc)
                return await self._fallback.take(key, rule, tokens)
            raise
        return float(wait)

    def _went_down(self, exc: BaseException) -> None:
        from shared.log import get_logger

        # Try Redis again in a few seconds; meanwhile, count here.
        self._down_until = time.monotonic() + 5.0
        get_logger(__name__).warning("ratelimit.redis_unreachable", error=type(exc).__name__)

    async def close(self) -> None:
        await self._client.aclose()


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for a Retry-After header (at least 1)."""
    return max(1, math.ceil(wait))
