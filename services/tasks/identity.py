"""API keys, the domain: making a key, its hash, the record we keep, and what
a valid create request is. No I/O here (keys_store.py stores the records).

A key is `vk_` and 43 URL-safe characters (32 random bytes). Only its SHA-256
is stored: a key has far more entropy than a password, so a fast hash is
enough and lets every validation be one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from shared import errors
from shared.auth import KEY_PREFIX
from shared.principal import KIND_KEY, SCOPES, Identity

_NAME = re.compile(r"^[\w .@:/+-]{1,128}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
PREFIX_SHOWN = 10


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is stored about a key (never the key)."""

    id: str
    name: str
    owner: str
    scopes: tuple[str, ...]
    key_hash: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def identity(self, token: str = "") -> Identity:
        return Identity(KIND_KEY, self.name, self.owner, frozenset(self.scopes), self.id, token)


@dataclass(frozen=True)
class NewApiKey:
    """A validated create request."""

    name: str
    owner: str
    scopes: tuple[str, ...]


class ApiKeyNotFound(errors.NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id} not found")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """(key id, secret key)."""
    return secrets.token_hex(8), KEY_PREFIX + secrets.token_urlsafe(32)


def validate_new_key(name: str, owner: str, scopes: list[str] | tuple[str, ...]) -> NewApiKey:
    name = name.strip()
    if not _NAME.match(name):
        raise errors.InvalidArgument("name", "1-128 letters, digits, spaces or . @ : / + - _")
    owner = owner.strip() or name
    if not _NAME.match(owner):
        raise errors.InvalidArgument("owner", "1-128 letters, digits, spaces or . @ : / + - _")
    if not scopes:
        raise errors.InvalidArgument("scopes", f"at least one of {', '.join(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise errors.InvalidArgument(
            "scopes", f"unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)}"
        )
    return NewApiKey(name, owner, tuple(scope for scope in SCOPES if scope in scopes))


def validate_key_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise errors.InvalidArgument("id", "an API key id is 16 lowercase hex digits")
    return key_id
