"""shared.retry: the backoff schedule and keep_running, with the random source,
the sleep and the clock injected (no real waiting, no chance)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import structlog

from shared.grpc_client import IDEMPOTENT_METHODS, RETRY_POLICY, service_config
from shared.retry import Backoff, Outage, keep_running, retry_call


class FakeSleep:
    """Records the delays asked for; cancels the caller after `limit` sleeps."""

    def __init__(self, limit: int = 1000) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self.limit:
            raise asyncio.CancelledError


def failing(times: int, error: Exception | None = None) -> tuple[Callable[[], object], list[int]]:
    """A body that raises `times` times, then returns "ok"; counts its calls."""
    calls = [0]

    async def body() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise error or ConnectionError("down")
        return "ok"

    return body, calls


def test_backoff_doubles_from_base_up_to_cap_without_jitter() -> None:
    backoff = Backoff(base_seconds=0.5, cap_seconds=3.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_jitter_spreads_by_the_fraction_each_way() -> None:
    backoff = Backoff(base_seconds=10.0, cap_seconds=100.0, jitter=0.2)
    assert backoff.delay(1, rand=lambda: 0.0) == pytest.approx(8.0)
    assert backoff.delay(1, rand=lambda: 0.5) == pytest.approx(10.0)
    assert backoff.delay(1, rand=lambda: 0.999999) == pytest.approx(12.0, abs=1e-4)


def test_backoff_never_exceeds_the_cap_even_with_jitter() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=5.0, jitter=0.5)
    assert backoff.delay(10, rand=lambda: 0.999999) == 5.0
    # A very long outage: the exponent overflows a float, the cap still answers.
    assert backoff.delay(100_000, rand=lambda: 0.5) == 5.0


def test_backoff_treats_attempt_zero_as_the_first() -> None:
    backoff = Backoff(base_seconds=2.0, jitter=0.0)
    assert backoff.delay(0) == backoff.delay(1) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base_seconds": -1.0}, {"multiplier": 0.5}, {"jitter": 1.5}, {"cap_seconds": -2.0}],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


async def test_keep_running_retries_with_growing_delays_until_the_body_returns() -> None:
    body, calls = failing(3)
    sleep = FakeSleep()
    await keep_running(
        "probe",
        body,
        backoff=Backoff(base_seconds=1.0, cap_seconds=3.0, jitter=0.0),
        sleep=sleep,
    )
    assert calls[0] == 4
    assert sleep.delays == [1.0, 2.0, 3.0]


async def test_keep_running_logs_the_outage_once_and_the_recovery_once() -> None:
    body, _ = failing(5)
    with structlog.testing.capture_logs() as logs:
        await keep_running("listener", body, backoff=Backoff(jitter=0.0), sleep=FakeSleep())
    events = [(entry["event"], entry.get("name")) for entry in logs]
    assert events.count(("loop.failing", "listener")) == 1
    assert events.count(("loop.recovered", "listener")) == 1
    recovered = next(entry for entry in logs if entry["event"] == "loop.recovered")
    assert recovered["failures"] == 5
    failing_line = next(entry for entry in logs if entry["event"] == "loop.failing")
    assert failing_line["error_type"] == "ConnectionError"
    assert "exc_info" not in failing_line


async def test_keep_running_without_failures_logs_nothing() -> None:
    body, calls = failing(0)
    with structlog.testing.capture_logs() as logs:
        await keep_running("quiet", body, sleep=FakeSleep())
    assert calls[0] == 1
    assert [entry for entry in logs if entry["log_level"] != "debug"] == []


async def test_keep_running_with_every_repeats_and_starts_the_backoff_over() -> None:
    # Fails twice, succeeds, and later fails again: the second outage starts at base.
    outcomes = iter([False, False, True, True, False, True])

    async def body() -> None:
        if not next(outcomes):
            raise OSError("redis down")

    sleep = FakeSleep(limit=6)
    with pytest.raises(asyncio.CancelledError):
        await keep_running(
            "tick",
            body,
            every=7.0,
            backoff=Backoff(base_seconds=1.0, jitter=0.0),
            sleep=sleep,
        )
    assert sleep.delays == [1.0, 2.0, 7.0, 7.0, 1.0, 7.0]


async def test_keep_running_lets_errors_outside_retry_on_through() -> None:
    body, calls = failing(1, error=KeyError("bug"))
    with pytest.raises(KeyError):
        await keep_running("narrow", body, retry_on=(OSError,), sleep=FakeSleep())
    assert calls[0] == 1


async def test_keep_running_passes_cancellation_through_without_retrying() -> None:
    calls = [0]

    async def body() -> None:
        calls[0] += 1
        raise asyncio.CancelledError

    sleep = FakeSleep()
    with pytest.raises(asyncio.CancelledError):
        await keep_running("stopping", body, sleep=sleep)
    assert calls[0] == 1
    assert sleep.delays == []


async def test_a_long_running_body_marks_itself_up_through_the_outage() -> None:
    # A listener: connects (fails twice), then is up for a while, then drops.
    outage = Outage("feed")
    attempts = [0]

    async def listen() -> None:
        attempts[0] += 1
        if attempts[0] <= 2:
            raise ConnectionRefusedError("no server")
        outage.succeeded()  # connected
        raise ConnectionResetError("dropped")

    sleep = FakeSleep(limit=4)
    with structlog.testing.capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await keep_running(
            "feed",
            listen,
            outage=outage,
            backoff=Backoff(base_seconds=1.0, jitter=0.0),
            sleep=sleep,
        )
    # The drop after being up starts the backoff over instead of growing it.
    assert sleep.delays == [1.0, 2.0, 1.0, 1.0]
    events = [entry["event"] for entry in logs if entry["log_level"] != "debug"]
    assert events == [
        "loop.failing",
        "loop.recovered",
        "loop.failing",
        "loop.recovered",
        "loop.failing",
    ]


def test_outage_reports_how_long_it_lasted_from_the_injected_clock() -> None:
    now = [100.0]
    outage = Outage("s3", event="store", clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        assert outage.failed(OSError("x")) == 1
        now[0] = 104.5
        assert outage.failed(OSError("x")) == 2
        assert outage.failing
        outage.succeeded()
    assert not outage.failing
    recovered = [entry for entry in logs if entry["event"] == "store.recovered"]
    assert recovered == [
        {
            "event": "store.recovered",
            "name": "s3",
            "failures": 2,
            "down_seconds": 4.5,
            "log_level": "info",
        }
    ]


def test_traceback_is_logged_only_when_asked() -> None:
    outage = Outage("crashy")
    error = RuntimeError("bug")
    with structlog.testing.capture_logs() as logs:
        outage.failed(error, traceback=True)
    assert logs[0]["exc_info"] is error


def test_channel_service_config_retries_unavailable_on_the_idempotent_methods_only() -> None:
    config = json.loads(service_config())
    [method_config] = config["methodConfig"]
    assert method_config["retryPolicy"] == RETRY_POLICY
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    names = {(name["service"], name["method"]) for name in method_config["name"]}
    assert ("verifier.tasks.v1.TaskService", "GetTask") in names
    assert ("verifier.queue.v1.QueueService", "EnqueueTask") in names
    assert ("verifier.tasks.v1.TaskService", "CreateTask") not in names
    assert ("verifier.tasks.v1.TaskService", "CancelTask") not in names
    assert len(names) == sum(len(methods) for methods in IDEMPOTENT_METHODS.values())
    # gRPC caps attempts at 5; more would be silently ignored.
    assert 2 <= method_config["retryPolicy"]["maxAttempts"] <= 5


async def test_retry_call_answers_after_the_faults_with_growing_delays() -> None:
    body, calls = failing(2)
    sleep = FakeSleep()
    with structlog.testing.capture_logs() as logs:
        got = await retry_call(
            "ListTasks", body, backoff=Backoff(base_seconds=1.0, jitter=0.0), sleep=sleep
        )
    assert (got, calls[0], sleep.delays) == ("ok", 3, [1.0, 2.0])
    events = [entry["event"] for entry in logs]
    assert events.count("retry.failing") == 1 and events.count("retry.recovered") == 1


async def test_retry_call_stops_after_its_tries_with_the_last_error() -> None:
    body, calls = failing(10)
    sleep = FakeSleep()
    with pytest.raises(ConnectionError):
        await retry_call("CompleteTasks", body, tries=3, backoff=Backoff(jitter=0.0), sleep=sleep)
    assert calls[0] == 3
    assert len(sleep.delays) == 2


async def test_retry_call_stops_when_the_next_try_would_start_past_its_budget() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    body, calls = failing(100)
    with pytest.raises(ConnectionError):
        await retry_call(
            "FailTasks",
            body,
            budget_seconds=10.0,
            backoff=Backoff(base_seconds=1.0, cap_seconds=4.0, jitter=0.0),
            clock=lambda: now[0],
            sleep=sleep,
        )
    # Tries at 0, 1, 3, 7; the next would start at 11, past the budget.
    assert calls[0] == 4 and now[0] == 7.0


async def test_retry_call_lets_a_refused_error_through_at_once() -> None:
    body, calls = failing(1, ValueError("bad request"))
    with pytest.raises(ValueError):
        await retry_call(
            "x", body, retry_if=lambda exc: isinstance(exc, ConnectionError), sleep=FakeSleep()
        )
    body, calls = failing(1, KeyError("not retried"))
    with pytest.raises(KeyError):
        await retry_call("x", body, retry_on=(ConnectionError,), sleep=FakeSleep())
    assert calls[0] == 1
