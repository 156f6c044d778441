"""Pure decisions of the queue: which errors are transient, the retry schedule,
and whether a worker counts as online. No I/O, no grpc import: status codes are
passed by name ("UNAVAILABLE", ...)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from .model import WorkerInfo, WorkerState

# Faults worth another try: a peer down or restarting (UNAVAILABLE, CANCELLED
# when a server shuts down mid-call), S3 down (surfaced as UNAVAILABLE), a
# timeout, a rate limit, and unexpected server errors (INTERNAL/UNKNOWN: a
# crash is more often a passing fault than a verdict; retries are bounded).
TRANSIENT_CODES = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "INTERNAL",
        "UNKNOWN",
        "CANCELLED",
    }
)

# Each delay is the exponential value +/- this fraction, so that jobs failed by
# one outage do not all come back in the same instant.
JITTER_FRACTION = 0.2
MAX_RETRY_DELAY_SECONDS = 3600.0


def is_transient(code_name: str) -> bool:
    """True when an RPC that failed with this status code is worth retrying."""
    return code_name in TRANSIENT_CODES


def backoff_delay(
    attempt: int,
    base_seconds: float,
    rand: Callable[[], float] = random.random,
    cap_seconds: float = MAX_RETRY_DELAY_SECONDS,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): base * 2**(attempt-1),
    with +/-20% jitter, at most `cap_seconds`."""
    exponent = max(attempt, 1) - 1
    raw = min(base_seconds * (2.0**exponent), cap_seconds)
    jitter = raw * JITTER_FRACTION * (2.0 * rand() - 1.0)
    return max(0.0, min(raw + jitter, cap_seconds))


def should_retry(attempt: int, max_attempts: int) -> bool:
    """After a transient error on attempt `attempt`: run again, or give up."""
    return attempt < max_attempts


def worker_state(last_heartbeat_at: float, now: float, offline_after_seconds: float) -> WorkerState:
    if now - last_heartbeat_at <= offline_after_seconds:
        return WorkerState.ONLINE
    return WorkerState.OFFLINE


def sort_workers(workers: Iterable[WorkerInfo]) -> list[WorkerInfo]:
    """Newest start first (the order ListWorkers promises)."""
    return sorted(workers, key=lambda w: (-w.started_at, w.id))


def truncate_error(message: str, limit: int = 4096) -> str:
    """FailTask accepts at most 4 KiB of error message."""
    encoded = message.encode()
    if len(encoded) <= limit:
        return message
    return encoded[: limit - 3].decode(errors="ignore") + "..."


def timing_problem(
    heartbeat_seconds: float, idle_timeout_seconds: float, offline_after_seconds: float
) -> tuple[str, str] | None:
    """A (field, message) when the worker timings contradict each other. The
    heartbeat re-claims the jobs in hand, so it must beat well inside the idle
    timeout, or a running job would be delivered to a second worker."""
    if idle_timeout_seconds < 2 * heartbeat_seconds:
        return (
            "job_idle_timeout_seconds",
            f"must be at least twice worker_heartbeat_seconds ({heartbeat_seconds}), "
            f"got {idle_timeout_seconds}",
        )
    if offline_after_seconds <= heartbeat_seconds:
        return (
            "worker_offline_after_seconds",
            f"must exceed worker_heartbeat_seconds ({heartbeat_seconds}), "
            f"got {offline_after_seconds}",
        )
    return None
