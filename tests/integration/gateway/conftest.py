"""The real stack behind the gateway, shared by the gateway's HTTP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.gateway.stack import Stack, running_stack, stack_settings
from tests.support.servers import S3Server


# Package scope: its servers (health probes, reconciler) stop with the last
# gateway test instead of running through the rest of the session's one loop.
@pytest.fixture(scope="package")
async def gateway_stack(
    postgres_url: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Tasks (PostgreSQL), queue (Redis), verification (S3) and the gateway; no worker,
    so tasks stay waiting unless a test says otherwise."""
    settings = stack_settings(postgres_url, redis_url, tmp_path_factory.mktemp("gw-stack"), s3)
    async with running_stack(settings) as stack:
        yield stack
