"""Change notifications for WatchTask.

A `ChangeFeed` wakes the in-process subscribers of a task when it changes. The
wake-up carries no data: a woken watcher reads the task's events after the
last one it sent, so a coalesced or repeated wake-up loses nothing.

Where wake-ups come from:
- PostgreSQL: `PostgresListener`, ONE connection per process that LISTENs on
  the channel the task_events trigger NOTIFYs in the writing transaction (so
  changes made by any instance of the service are seen): one notification
  per statement, its payload the changed task ids, comma-separated (migration
  0007_batch_notify). After a reconnect it wakes every subscriber, since
  notifications may have been missed meanwhile.
- SQLite: the store calls `publish` after each commit (one process owns the file).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import psycopg

from shared.log import get_logger
from shared.retry import Backoff, Outage, keep_running

from .errors import ChangeFeedUnavailable
from .settings import database_url
from .tables import NOTIFY_CHANNEL

log = get_logger(__name__)


class Subscription:
    """One watcher's wake-up flag."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Return once the task may have changed since the previous return."""
        await self._event.wait()
        self._event.clear()


class ChangeFeed:
    """Fans task-change wake-ups out to in-process subscribers."""

    def __init__(self, *, needs_listener: bool = False) -> None:
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        # Without a live listener a subscriber could miss changes: wait for it.
        self._ready = asyncio.Event()
        if not needs_listener:
            self._ready.set()

    @property
    def watched_tasks(self) -> int:
        return len(self._subscribers)

    def publish(self, task_id: str) -> None:
        for subscription in self._subscribers.get(task_id, ()):
            subscription.wake()

    def publish_all(self) -> None:
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.wake()

    def set_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, task_id: str, ready_timeout: float = 5.0
    ) -> AsyncIterator[Subscription]:
        """Subscribe BEFORE reading the task's state, so no change falls between."""
        try:
            await asyncio.wait_for(self._ready.wait(), ready_timeout)
        except TimeoutError:
            raise ChangeFeedUnavailable(
                "the change listener is not connected to the database; retry shortly"
            ) from None
        subscription = Subscription(task_id)
        self._subscribers[task_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(task_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[task_id]


class PostgresListener:
    """The one LISTEN connection of the process; a background job of the server."""

    def __init__(self, url: str, feed: ChangeFeed, retry_seconds: float = 1.0) -> None:
        self.url = database_url(url, "libpq")
        self.feed = feed
        self.backoff = Backoff(base_seconds=retry_seconds, cap_seconds=max(retry_seconds, 10.0))
        self.connected = False
        self._outage = Outage("feed.listener", event="feed.listener")

    async def run(self) -> None:
        await keep_running(
            "feed.listener", self._listen_once, backoff=self.backoff, outage=self._outage
        )

    async def _listen_once(self) -> None:
        try:
            await self._listen()
        finally:
            self.connected = False
            self.feed.set_ready(False)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        async with conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.connected = True
            self.feed.set_ready(True)
            self._outage.succeeded()
            # Changes may have been missed while disconnected: every watcher re-reads.
            self.feed.publish_all()
            log.info("feed.listening", channel=NOTIFY_CHANNEL)
            async for notify in conn.notifies():
                for task_id in notify.payload.split(","):
                    self.feed.publish(task_id)
        # The server ended the stream (a restart): listen again.
        raise ConnectionError("the LISTEN connection closed")
