"""The API keys' records in the tasks database (PostgreSQL, or the embedded
SQLite file), through a small synchronous SQLAlchemy engine run in a thread:
keys are read once per cache period, not per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from shared.principal import Identity

from .identity import (
    PREFIX_SHOWN,
    ApiKeyNotFound,
    ApiKeyRecord,
    NewApiKey,
    generate_key,
    hash_key,
)
from .tables import api_keys

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        owner=row.owner,
        scopes=tuple(row.scopes.split()),
        key_hash=row.key_hash,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class KeyStore:
    """Create, list, revoke and look up keys. `url` is a SQLAlchemy sync URL."""

    def __init__(self, url: str, clock: Clock = _now) -> None:
        connect_args: dict[str, Any] = {"timeout": 10} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(
            url, pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args=connect_args
        )
        self.clock = clock

    async def create(self, new: NewApiKey) -> tuple[ApiKeyRecord, str]:
        """The stored record and the secret key (returned this once)."""
        key_id, secret = generate_key()
        record = ApiKeyRecord(
            id=key_id,
            name=new.name,
            owner=new.owner,
            scopes=new.scopes,
            key_hash=hash_key(secret),
            prefix=secret[:PREFIX_SHOWN],
            created_at=self.clock(),
        )

        def insert() -> None:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(api_keys).values(
                        id=record.id,
                        name=record.name,
                        owner=record.owner,
                        scopes=" ".join(record.scopes),
                        key_hash=record.key_hash,
                        prefix=record.prefix,
                        created_at=record.created_at,
                    )
                )

        await asyncio.to_thread(insert)
        return record, secret

    async def list(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        def select() -> list[ApiKeyRecord]:
            query = sa.select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.id)
            if not include_revoked:
                query = query.where(api_keys.c.revoked_at.is_(None))
            with self.engine.connect() as conn:
                return [_record(row) for row in conn.execute(query)]

        return await asyncio.to_thread(select)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        now = self.clock()

        def update() -> ApiKeyRecord:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None:
                raise ApiKeyNotFound(key_id)
            return _record(row)

        return await asyncio.to_thread(update)

    async def lookup(self, secret: str) -> Identity | None:
        """The identity of a valid key (its last use noted), None otherwise."""
        digest = hash_key(secret)
        now = self.clock()

        def find() -> ApiKeyRecord | None:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == digest)).first()
                if row is None or row.revoked_at is not None:
                    return None
                conn.execute(
                    sa.update(api_keys).where(api_keys.c.id == row.id).values(last_used_at=now)
                )
                return _record(row)

        record = await asyncio.to_thread(find)
        return record.identity(secret) if record is not None else None

    async def count_admin_keys(self) -> int:
        def count() -> int:
            query = sa.select(api_keys.c.scopes).where(api_keys.c.revoked_at.is_(None))
            with self.engine.connect() as conn:
                return sum(1 for (scopes,) in conn.execute(query) if "admin" in scopes.split())

        return await asyncio.to_thread(count)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.dispose)
