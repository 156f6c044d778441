"""The one retry mechanism: a capped, jittered exponential backoff;
`keep_running`, which keeps a background body alive across faults; and
`retry_call`, a call tried again on a fault it may be retried for, within a
number of tries or a time budget.

A loop that must survive an outage (a listener, a maintenance tick, a bucket
that may not exist yet) is written as a body and handed to `keep_running`
instead of carrying its own `while True: try ... sleep` loop. The outage is
logged once when it starts and once when it ends, never once per attempt, so
a dependency down for an hour costs two log lines, not thousands.

RPC-level retries (a peer restarting) are not done here: the client channel
declares them as a gRPC service config (`shared.grpc_client`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.log import get_logger

log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Rand = Callable[[], float]
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays after consecutive failures: base * multiplier**(n-1), at most `cap`,
    each spread by +/- `jitter` of itself so that everything failed by one outage
    does not come back in the same instant."""

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    multiplier: float = 2.0
    # A fraction of the delay (0.2: +/-20%); 0 for exact delays.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.cap_seconds < 0:
            raise ValueError("backoff delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be a fraction in 0..1")

    def delay(self, failures: int, rand: Rand = random.random) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based).
        `rand` returns a float in [0, 1); tests pass a fixed one."""
        exponent = max(failures, 1) - 1
        try:
            raw = min(self.base_seconds * self.multiplier**exponent, self.cap_seconds)
        except OverflowError:  # a very long outage: the cap is the answer
            raw = self.cap_seconds
        spread = raw * self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, min(raw + spread, self.cap_seconds))


class Outage:
    """The up/failing state of one named thing; logs each change of state once.

    `failed` on the first failure after being up logs `<event>.failing` (warning,
    with the error); later failures only count. `succeeded` after failures logs
    `<event>.recovered` (info, with how many failures and for how long).
    """

    def __init__(
        self, name: str, *, event: str = "loop", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.event = event
        self.failures = 0
        self._since = 0.0
        self._clock = clock

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException, *, traceback: bool = False) -> int:
        """Record one failure; returns how many in a row (1 for the first).
        `traceback` adds the stack to the one line that opens the outage."""
        self.failures += 1
        if self.failures == 1:
            self._since = self._clock()
            fields: dict[str, object] = {
                "name": self.name,
                "error": str(exc) or type(exc).__name__,
                "error_type": type(exc).__name__,
            }
            if traceback:
                fields["exc_info"] = exc
            log.warning(f"{self.event}.failing", **fields)
        else:
            log.debug(f"{self.event}.still_failing", name=self.name, failures=self.failures)
        return self.failures

    def succeeded(self) -> None:
        """Record a success; logs the recovery when it ends an outage."""
        if self.failures:
            log.info(
                f"{self.event}.recovered",
                name=self.name,
                failures=self.failures,
                down_seconds=round(self._clock() - self._since, 3),
            )
        self.failures = 0


async def keep_running(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
    every: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    outage: Outage | None = None,
    traceback: bool = False,
    sleep: Sleep = asyncio.sleep,
    rand: Rand = random.random,
) -> None:
    """Run `body` until it returns, retrying after an error with `backoff`.

    With `every` set, a return is not the end: the body runs again `every`
    seconds later, forever (a periodic job such as a reconciler or a heartbeat).
    Errors not in `retry_on` propagate, and so does cancellation: a server
    shutting down cancels the task that runs this. The body's own state (a
    connection) belongs to the body: each attempt starts afresh.

    A body that runs for long once it is up (a LISTEN connection) never returns
    to say so: pass an `outage` and call `outage.succeeded()` inside the body
    once it is up, which logs the recovery and starts the backoff over.
    `traceback` logs the stack of the error that opens an outage (for crashes
    of code that should not fail, rather than a dependency being down).
    """
    backoff = backoff or Backoff()
    outage = outage or Outage(name)
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except retry_on as exc:
            failures = outage.failed(exc, traceback=traceback)
            await sleep(backoff.delay(failures, rand))
            continue
        outage.succeeded()
        if every is None:
            return
        await sleep(every)


def _any(_exc: BaseException) -> bool:
    return True


async def retry_call(
    name: str,
    body: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException], bool] = _any,
    backoff: Backoff | None = None,
    tries: int | None = None,
    budget_seconds: float | None = None,
    outage: Outage | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    rand: Rand = random.random,
) -> T:
    """`body()`'s result, tried again after an error in `retry_on` that
    `retry_if` accepts (a transient status), with `backoff`.

    Bounded by `tries` (attempts in all) and by `budget_seconds` (no attempt
    starts `budget_seconds` or later after the first one did); None leaves a
    bound off, both None retries until the body succeeds. Other errors
    propagate at once, the last error when a bound is reached, and
    cancellation always. The outage is logged once when it starts and once
    when it ends (`Outage`, event "retry" unless one is passed), never once
    per attempt; `outage.failures` tells a caller how many tries failed.
    """
    backoff = backoff or Backoff()
    outage = outage or Outage(name, event="retry", clock=clock)
    started = clock()
    while True:
        try:
            result = await body()
        except asyncio.CancelledError:
            raise
        except retry_on as exc:
            failures = outage.failed(exc)
            if not retry_if(exc):
                raise
            delay = backoff.delay(failures, rand)
            if tries is not None and failures >= tries:
                raise
            if budget_seconds is not None and clock() + delay - started >= budget_seconds:
                raise
            await sleep(delay)
            continue
        outage.succeeded()
        return result
