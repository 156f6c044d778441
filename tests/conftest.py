"""Session fixtures: real PostgreSQL, Redis and S3 servers (see tests/support/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import servers


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
