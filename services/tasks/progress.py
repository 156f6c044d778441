"""Progress held in memory (issue 13.3): a worker's ReportProgress is kept
here and wakes the task's watchers at once, but reaches the database only at
most once a second per task (and never as an audit row: progress is not a
state change). The start counts as a write: a report within a second of the
start this process recorded is held, so a task verified in less than a
second is written twice (started, finished), not three times. Watchers and
GetTask of this process see every report; other instances of the service see
the written ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    attempt: int
    progress: int
    message: str
    written_at: float


class ProgressBoard:
    """The latest progress of each running task in this process."""

    def __init__(self, clock: Callable[[], float], *, min_write_seconds: float = 1.0) -> None:
        self._clock = clock
        self.min_write_seconds = min_write_seconds
        self._entries: dict[str, _Entry] = {}

    def started(self, task_id: str, attempt: int) -> None:
        """This process started the attempt (its row was just written, progress 0)."""
        self._entries[task_id] = _Entry(attempt, 0, "", self._clock())

    def offer(self, task_id: str, attempt: int, progress: int, message: str) -> bool:
        """Hold the report; True when it is due to be written now. A report of an
        attempt this process did not start is written (the database then says
        whether it is the task's current attempt)."""
        now = self._clock()
        entry = self._entries.get(task_id)
        if entry is None or entry.attempt != attempt:
            self._entries[task_id] = _Entry(attempt, progress, message, now)
            return True
        if progress <= entry.progress:
            return False  # never backwards, and a repeat says nothing new
        entry.progress, entry.message = progress, message
        if now - entry.written_at >= self.min_write_seconds:
            entry.written_at = now
            return True
        return False

    def progress(self, task_id: str, attempt: int | None = None) -> int | None:
        """The latest reported progress held for the task (of that attempt when
        given), None without a report."""
        entry = self._entries.get(task_id)
        if entry is None or not entry.progress:
            return None
        return entry.progress if attempt is None or entry.attempt == attempt else None

    def forget(self, task_id: str) -> None:
        """The task left its attempt (finished, deferred, stale)."""
        self._entries.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._entries)
