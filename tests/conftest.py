"""Session fixtures: real PostgreSQL, Redis and S3 servers (see tests/support/servers.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest

from shared import metrics
from tests.support import servers
from tests.support.hang_dump import DUMP_BEFORE_TIMEOUT_SECONDS, HangDumpTimer
from tests.support.settings import SETTINGS

# The services' metrics ports default to fixed numbers (9451-9453, production's),
# which parallel test runs on one machine would fight over. A test that names no
# metrics address gets a free one (port 0): services started as processes through
# the environment, services started in-process through the address they resolve to.
METRICS_ENV = ("TASKS", "QUEUE", "VERIFICATION", "WORKER")
for _name in METRICS_ENV:
    os.environ[f"{_name}_METRICS_LISTEN_ADDR"] = "127.0.0.1:0"
DEFAULT_METRICS_ADDRS = frozenset(
    f.default
    for cls in SETTINGS.values()
    for f in dataclasses.fields(cls)
    if f.name.endswith("metrics_listen_addr") and isinstance(f.default, str) and f.default
)


@pytest.fixture(autouse=True, scope="session")
def metrics_on_free_ports() -> Iterator[None]:
    """In-process services: a default metrics address becomes the same host on a free port."""
    serve = metrics.serve_metrics

    def on_free_port(listen_addr: str) -> metrics.MetricsServer | None:
        if listen_addr in DEFAULT_METRICS_ADDRS:
            listen_addr = f"{listen_addr.rpartition(':')[0]}:0"
        return serve(listen_addr)

    metrics.serve_metrics = on_free_port  # type: ignore[assignment]
    try:
        yield
    finally:
        metrics.serve_metrics = serve  # type: ignore[assignment]


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with servers.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A database of this test run's own on a real PostgreSQL (psycopg URL)."""
    with servers.postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3() -> Iterator[servers.S3Server]:
    with servers.s3_server() as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table (tests/fault/test_fault_suite.py), one line per fault."""
    from tests.fault.rows import TABLE

    if TABLE:
        terminalreporter.section("fault table")
        for line in TABLE:
            terminalreporter.write_line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Before pytest-timeout fails a hung test, print where its asyncio tasks
    wait (tests/support/hang_dump.py); pytest-timeout's own timer is set as usual."""
    delay = max(settings.timeout - DUMP_BEFORE_TIMEOUT_SECONDS, settings.timeout * 0.9)
    timer = HangDumpTimer(item.nodeid, delay)
    item.stash[_HANG_DUMP] = timer
    timer.start()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = item.stash.get(_HANG_DUMP, None)
    if timer is not None:
        timer.cancel()


_HANG_DUMP = pytest.StashKey[HangDumpTimer]()
