"""The whole stack in-process with authentication on (as `make run` starts it):
service certificates from a dev CA, keys in the tasks database, a worker, and
the gateway in front. Keys are made through the identity module itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.tasks.identity import validate_new_key
from services.tasks.keys_store import KeyStore
from shared.tls import ensure_dev_certs
from tests.integration.gateway.stack import Stack, running_stack, stack_settings
from tests.support.servers import S3Server, free_port
from tests.support.settings import StackSettings

# Small on purpose: the burst test drains the create bucket of its own key.
CREATE_BURST = 4
CREATE_PER_SECOND = 0.5


def auth_settings(postgres_url: str, redis_url: str, data_dir: Path, s3: S3Server) -> StackSettings:
    certs = data_dir / "certs"
    ensure_dev_certs(certs)
    extra: dict[str, object] = {
        "auth_enabled": True,
        "tls_dir": str(certs),
        "identity_cache_seconds": 1.0,
        "rate_limit_create_per_second": CREATE_PER_SECOND,
        "rate_limit_create_burst": CREATE_BURST,
    }
    for name in ("tasks", "queue", "verification"):
        port = free_port()
        extra[f"{name}_internal_listen_addr"] = f"127.0.0.1:{port}"
        extra[f"{name}_internal_addr"] = f"127.0.0.1:{port}"
    return stack_settings(postgres_url, redis_url, data_dir, s3, **extra)


# Package scope, not session: the stack's worker retries the redpill tasks these
# tests create (api.redpill.ai is not reachable from CI: a transient fault) for
# the whole retry budget; it stops with the last test here instead of costing
# CPU in every later test of the session (they share one event loop).
@pytest.fixture(scope="package")
async def auth_stack(
    postgres_url: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = auth_settings(postgres_url, redis_url, tmp_path_factory.mktemp("auth-stack"), s3)
    async with running_stack(settings, with_worker=True) as stack:
        yield stack


MakeKey = Callable[..., Awaitable[str]]


@pytest.fixture(scope="package")
async def make_key(auth_stack: Stack) -> AsyncIterator[MakeKey]:
    """make_key("tasks.submit", owner="alice") -> a fresh key with those scopes."""
    store = KeyStore(auth_stack.settings.tasks.effective_database_url)
    count = 0

    async def make(*scopes: str, owner: str = "") -> str:
        nonlocal count
        count += 1
        name = f"test-key-{count}"
        _, secret = await store.create(validate_new_key(name, owner or name, list(scopes)))
        return secret

    yield make
    await store.close()
