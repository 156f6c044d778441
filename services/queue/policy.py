"""Pure decisions of the queue: which errors are transient, the retry schedule
and budget, the busy-task wait, and whether a worker counts as online. No I/O,
no grpc import: status codes are passed by name ("UNAVAILABLE", ...)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from shared.retry import Backoff

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

# The retry schedule of a job: the shared capped, jittered backoff, by run
# number, from retry_base_seconds up to this cap (a dependency down for the
# whole budget is looked at again at least this often).
MAX_RETRY_DELAY_SECONDS = 15.0


def is_transient(code_name: str) -> bool:
    """True when an RPC that failed with this status code is worth retrying."""
    return code_name in TRANSIENT_CODES


def retry_backoff(base_seconds: float) -> Backoff:
    """The delays between runs of a job that met transient faults."""
    return Backoff(
        base_seconds=base_seconds, cap_seconds=max(base_seconds, MAX_RETRY_DELAY_SECONDS)
    )


def busy_delay(base_seconds: float, rand: Callable[[], float] = random.random) -> float:
    """The one rule, in both modes, for a job whose task another worker holds:
    look again after the first retry delay (jittered, so that a dozen such
    jobs do not all come back in the same instant). If that worker dies, this
    delivery is the one left, so it is never dropped."""
    return retry_backoff(base_seconds).delay(1, rand)


def within_budget(first_fault_at: float, now: float, budget_seconds: float) -> bool:
    """After a transient fault: may the job still be retried? The budget is
    time, counted from the job's first transient fault (0: this is it), not a
    number of attempts, so an outage of any length under it costs no task."""
    if first_fault_at <= 0:
        return True
    return now - first_fault_at < budget_seconds


def idle_reasons(workers: Iterable[WorkerInfo]) -> tuple[str, ...]:
    """The distinct reasons online workers give for taking no jobs."""
    reasons = {w.idle_reason for w in workers if w.state is WorkerState.ONLINE and w.idle_reason}
    return tuple(sorted(reasons))


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
