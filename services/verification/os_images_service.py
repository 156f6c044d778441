"""OsImageService's use cases: list, get, create, delete OS image entries.

Stored entries come from the service's own store; read-only ones (shipped
with the verifier, operator files) are listed beside them. No grpc here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

from .errors import EvidenceMalformed
from .os_image_store import OsImageNotFound, OsImageReadOnly, OsImageStore
from .os_images import OsImageEntry, image_hash

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class ListedImage:
    entry: OsImageEntry
    read_only: bool


def _token(last_hash: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last_hash}".encode()).decode()


def _after(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise EvidenceMalformed("page_token", "not a token this service issued") from None
    if not text.startswith("after:"):
        raise EvidenceMalformed("page_token", "not a token this service issued")
    return image_hash(text[len("after:") :], "page_token")


class OsImageCatalogService:
    def __init__(self, store: OsImageStore, fixed: tuple[OsImageEntry, ...] = ()) -> None:
        self.store = store
        self.fixed = {e.os_image_hash: e for e in fixed}

    async def list(self, page_size: int, page_token: str) -> tuple[list[ListedImage], str]:
        if page_size < 0:
            raise EvidenceMalformed("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(page_token)
        stored = await asyncio.to_thread(self.store.list)
        merged = {h: ListedImage(e, True) for h, e in self.fixed.items()}
        merged.update({e.os_image_hash: ListedImage(e, False) for e in stored})
        ordered = [merged[h] for h in sorted(merged) if h > after]
        page = ordered[:size]
        more = len(ordered) > size
        return page, _token(page[-1].entry.os_image_hash) if more and page else ""

    async def get(self, os_image_hash: str) -> ListedImage:
        key = image_hash(os_image_hash)
        found = await asyncio.to_thread(self.store.get, key)
        if found is not None:
            return ListedImage(found, False)
        if key in self.fixed:
            return ListedImage(self.fixed[key], True)
        raise OsImageNotFound(f"osImages/{key} not found")

    async def create(self, entry: OsImageEntry) -> ListedImage:
        await asyncio.to_thread(self.store.create, entry)
        return ListedImage(entry, False)

    async def delete(self, os_image_hash: str) -> None:
        key = image_hash(os_image_hash)
        try:
            await asyncio.to_thread(self.store.delete, key)
        except OsImageNotFound:
            if key in self.fixed:
                raise OsImageReadOnly(
                    f"osImages/{key} is shipped with the verifier or configured as a file; "
                    "remove it from OS_ALLOWLIST_PATH instead"
                ) from None
            raise
