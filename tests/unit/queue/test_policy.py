"""Pure decisions of the queue: retry schedule, transient classification, worker state."""

from __future__ import annotations

import pytest

from services.queue import policy
from services.queue.model import WorkerInfo, WorkerState


def test_retry_delays_double_from_the_base_and_stop_at_the_cap() -> None:
    backoff = policy.retry_backoff(1.0)
    middle = lambda: 0.5  # noqa: E731 - jitter factor 0
    assert [backoff.delay(n, middle) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert backoff.delay(40, lambda: 0.99) == policy.MAX_RETRY_DELAY_SECONDS


def test_busy_wait_is_the_first_retry_delay_with_jitter_in_both_modes() -> None:
    assert policy.busy_delay(1.0, lambda: 0.0) == pytest.approx(0.8)
    assert policy.busy_delay(1.0, lambda: 0.5) == pytest.approx(1.0)


def test_retry_budget_is_time_from_the_first_fault_not_a_count() -> None:
    assert policy.within_budget(0.0, 1_000.0, 600.0)  # this is the first fault
    assert policy.within_budget(1_000.0, 1_599.0, 600.0)
    assert not policy.within_budget(1_000.0, 1_600.0, 600.0)


def test_idle_reasons_are_those_of_online_workers_once_each() -> None:
    def worker(name: str, reason: str, state: WorkerState) -> WorkerInfo:
        return WorkerInfo(name, "h", 1, 0.0, 0.0, state, (), 1, 0, reason)

    workers = [
        worker("a", "verification service NOT_SERVING", WorkerState.ONLINE),
        worker("b", "verification service NOT_SERVING", WorkerState.ONLINE),
        worker("c", "queue paused", WorkerState.OFFLINE),
        worker("d", "", WorkerState.ONLINE),
    ]
    assert policy.idle_reasons(workers) == ("verification service NOT_SERVING",)


@pytest.mark.parametrize(
    "code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "ABORTED"]
)
def test_faults_of_a_peer_or_a_store_are_transient(code: str) -> None:
    assert policy.is_transient(code)


@pytest.mark.parametrize(
    "code",
    ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "PERMISSION_DENIED", "UNIMPLEMENTED"],
)
def test_rejections_are_final(code: str) -> None:
    assert not policy.is_transient(code)


def test_worker_is_offline_after_the_heartbeat_timeout() -> None:
    assert policy.worker_state(100.0, 110.0, 15.0) is WorkerState.ONLINE
    assert policy.worker_state(100.0, 115.0, 15.0) is WorkerState.ONLINE
    assert policy.worker_state(100.0, 115.1, 15.0) is WorkerState.OFFLINE


def test_error_messages_are_cut_to_four_kib() -> None:
    cut = policy.truncate_error("é" * 5000)
    assert len(cut.encode()) <= 4096
    assert cut.endswith("...")
    assert policy.truncate_error("short") == "short"


def test_pause_reaches_every_worker_within_a_second_by_construction() -> None:
    """Pub/sub wakes a worker at once; without it, the flag is re-read at least
    every second, and a read in flight (blocking at most half a second) hands
    back what it got after the pause."""
    from services.queue.consumer import TAKE_BLOCK_SECONDS
    from services.queue.redis_backend import PAUSE_REREAD_SECONDS

    assert PAUSE_REREAD_SECONDS <= 1.0
    assert TAKE_BLOCK_SECONDS <= 0.5


def test_idle_timeout_shorter_than_two_heartbeats_is_refused() -> None:
    assert policy.timing_problem(2.0, 60.0, 15.0) is None
    field, message = policy.timing_problem(2.0, 3.0, 15.0) or ("", "")
    assert field == "job_idle_timeout_seconds" and "worker_heartbeat_seconds" in message
    field, _ = policy.timing_problem(2.0, 60.0, 2.0) or ("", "")
    assert field == "worker_offline_after_seconds"
