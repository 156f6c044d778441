"""Pure decisions of the queue: retry schedule, transient classification, worker state."""

from __future__ import annotations

import pytest

from services.queue import policy
from services.queue.model import WorkerState


def test_backoff_doubles_from_the_base_without_jitter() -> None:
    middle = lambda: 0.5  # noqa: E731 - jitter factor 0
    assert [policy.backoff_delay(n, 5.0, middle) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]


def test_backoff_jitter_stays_within_twenty_percent() -> None:
    assert policy.backoff_delay(2, 5.0, lambda: 0.0) == pytest.approx(8.0)
    assert policy.backoff_delay(2, 5.0, lambda: 1.0) == pytest.approx(12.0)


def test_backoff_is_capped() -> None:
    assert policy.backoff_delay(40, 5.0, lambda: 1.0) == policy.MAX_RETRY_DELAY_SECONDS


def test_backoff_of_attempt_zero_is_the_base() -> None:
    assert policy.backoff_delay(0, 2.0, lambda: 0.5) == 2.0


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


def test_three_attempts_mean_two_retries() -> None:
    assert [policy.should_retry(n, 3) for n in (1, 2, 3, 4)] == [True, True, False, False]


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
    from services.queue.broker import VerifierStreamBroker
    from services.queue.redis_backend import PAUSE_REREAD_SECONDS

    assert PAUSE_REREAD_SECONDS <= 1.0
    broker = VerifierStreamBroker("redis://127.0.0.1:1/0", "q")
    assert broker.block <= 500


def test_idle_timeout_shorter_than_two_heartbeats_is_refused() -> None:
    assert policy.timing_problem(2.0, 60.0, 15.0) is None
    field, message = policy.timing_problem(2.0, 3.0, 15.0) or ("", "")
    assert field == "job_idle_timeout_seconds" and "worker_heartbeat_seconds" in message
    field, _ = policy.timing_problem(2.0, 60.0, 2.0) or ("", "")
    assert field == "worker_offline_after_seconds"
