"""Where a hung test waits: a few seconds before pytest-timeout fails a test,
print the stack of every asyncio task of the loop the main thread runs (the
session loop, pytest-asyncio), and every thread's stack.

pytest-timeout's own dump shows only the main thread, which for an async test
is the event loop idle in its selector: it says *that* an await never returned,
not *which*. The task stacks say which. Armed for every test by the
pytest_timeout_set_timer hook in tests/conftest.py; a timer thread per test,
cancelled when the test ends, so it costs nothing unless a test hangs.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import traceback
from types import FrameType
from typing import TextIO

# How long before the timeout the stacks are printed (the test still runs).
DUMP_BEFORE_TIMEOUT_SECONDS = 10.0
# The loop must run the dump itself (tasks belong to it); a blocked loop
# does not, and then only the threads' stacks are printed.
LOOP_ANSWER_SECONDS = 5.0


class HangDumpTimer:
    """Prints the stacks `delay` seconds after `start` unless cancelled first."""

    def __init__(self, nodeid: str, delay: float) -> None:
        self.nodeid = nodeid
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True
        self._timer.name = f"hang-dump {nodeid}"

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        out = sys.stderr
        out.write(
            f"\n===== {self.nodeid}: about to time out; "
            "stacks of its asyncio tasks and threads =====\n"
        )
        dump_stacks(out)
        out.flush()


def dump_stacks(out: TextIO) -> None:
    loop = _main_thread_loop()
    if loop is None:
        out.write("(the main thread runs no asyncio loop)\n")
    else:
        answered = threading.Event()
        text = io.StringIO()

        def on_loop() -> None:
            try:
                write_tasks(text)
            finally:
                answered.set()

        loop.call_soon_threadsafe(on_loop)
        if answered.wait(LOOP_ANSWER_SECONDS):
            out.write(text.getvalue())
        else:
            out.write(f"(the event loop did not run a callback within {LOOP_ANSWER_SECONDS} s:")
            out.write(" it is blocked, see the main thread's stack)\n")
    write_threads(out)


def write_tasks(out: TextIO) -> None:
    """Every task of the running loop: what it awaits and its coroutine stack."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    out.write(f"--- {len(tasks)} asyncio tasks ---\n")
    for task in tasks:
        waiter = getattr(task, "_fut_waiter", None)
        out.write(f"\n{task!r}\n  awaits: {waiter!r}\n")
        # Task.print_stack shows only the task's outer coroutine; the await
        # chain below it says where it actually waits.
        for frame in await_chain(task.get_coro()):
            out.write("".join(f"  {line}" for line in traceback.format_stack(frame, limit=1)))


def await_chain(awaitable: object) -> list[FrameType]:
    """The frames of a coroutine and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    while awaitable is not None and id(awaitable) not in seen:
        seen.add(id(awaitable))
        frame = (
            getattr(awaitable, "cr_frame", None)
            or getattr(awaitable, "gi_frame", None)
            or getattr(awaitable, "ag_frame", None)
        )
        if frame is not None:
            frames.append(frame)
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
            or getattr(awaitable, "ag_await", None)
        )
    return frames


def write_threads(out: TextIO) -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        out.write(f"\n--- thread {names.get(ident, ident)} ---\n")
        out.write("".join(traceback.format_stack(frame)))


def _main_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The loop the main thread is running, found in its stack (run_forever's `self`)."""
    ident = threading.main_thread().ident
    frame: FrameType | None = sys._current_frames().get(ident) if ident else None
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if frame.f_code.co_name == "run_forever" and isinstance(
            candidate, asyncio.AbstractEventLoop
        ):
            return candidate
        frame = frame.f_back
    return None
