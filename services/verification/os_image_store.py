"""Where OS image entries live: the verification service's own store.

The same backend as the reports (a local folder embedded, S3 in production),
under `os-images/{os_image_hash}.json`. Entries shipped with the verifier
(data/os_images.json) and operator files (OS_ALLOWLIST_PATH) are read-only
and sit behind the stored ones. The engine reads through OsImageCatalog,
which caches each lookup briefly so a pool worker does not hit S3 per quote.
"""

from __future__ import annotations

import abc
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable

from .errors import EvidenceMalformed
from .os_images import OsImageEntry, entry_from_dict, image_hash, shape_of
from .s3 import s3_client
from .settings import ReportStoreSettings

PREFIX = "os-images/"


class OsImageNotFound(NotFound):
    """No entry for that OS image hash."""


class OsImageExists(AlreadyExists):
    """An entry for that OS image hash exists already (create is write-once)."""


class OsImageReadOnly(FailedPrecondition):
    """A shipped or file-configured entry cannot be deleted through the API."""


class OsImageStoreUnavailable(Unavailable):
    """The bucket is not there yet (the service creates it at start); retry."""


class OsImageFileError(ValueError):
    """An entry file an operator must fix (raised at start-up, not per task)."""


def _key(os_image_hash: str) -> str:
    return f"{PREFIX}{image_hash(os_image_hash)}.json"


def _encode(entry: OsImageEntry) -> bytes:
    return json.dumps(entry.to_dict(), sort_keys=True, indent=1).encode("utf-8")


class OsImageStore(abc.ABC):
    @abc.abstractmethod
    def get(self, os_image_hash: str) -> OsImageEntry | None: ...

    @abc.abstractmethod
    def list(self) -> list[OsImageEntry]: ...

    @abc.abstractmethod
    def create(self, entry: OsImageEntry) -> None:
        """Raises OsImageExists when the image has an entry already."""

    @abc.abstractmethod
    def replace(self, entry: OsImageEntry) -> None:
        """Create or overwrite (adding measurements to a known image)."""

    @abc.abstractmethod
    def delete(self, os_image_hash: str) -> None:
        """Raises OsImageNotFound."""


class LocalOsImageStore(OsImageStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, os_image_hash: str) -> Path:
        return self.root / _key(os_image_hash)

    def get(self, os_image_hash: str) -> OsImageEntry | None:
        try:
            data = self._path(os_image_hash).read_bytes()
        except FileNotFoundError:
            return None
        return entry_from_dict(json.loads(data))

    def list(self) -> list[OsImageEntry]:
        folder = self.root / PREFIX
        if not folder.is_dir():
            return []
        return [entry_from_dict(json.loads(p.read_bytes())) for p in sorted(folder.glob("*.json"))]

    def create(self, entry: OsImageEntry) -> None:
        path = self._path(entry.os_image_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(_encode(entry))
        try:
            # link() fails when the target exists: write-once without a race.
            os.link(tmp, path)
        except FileExistsError:
            raise OsImageExists(f"{entry.name} exists already") from None
        finally:
            tmp.unlink(missing_ok=True)

    def replace(self, entry: OsImageEntry) -> None:
        path = self._path(entry.os_image_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_encode(entry))
        tmp.replace(path)

    def delete(self, os_image_hash: str) -> None:
        try:
            self._path(os_image_hash).unlink()
        except FileNotFoundError:
            raise OsImageNotFound(f"osImages/{os_image_hash} not found") from None


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _missing(exc: Exception) -> bool:
    # No bucket yet (the service creates it in the background) holds no entries either.
    return _code(exc) in ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


class S3OsImageStore(OsImageStore):
    def __init__(self, settings: ReportStoreSettings, client: Any = None) -> None:
        self.bucket = settings.s3_bucket
        self.client = client or s3_client(settings)

    def get(self, os_image_hash: str) -> OsImageEntry | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=_key(os_image_hash))
        except Exception as exc:
            if _missing(exc):
                return None
            raise
        return entry_from_dict(json.loads(obj["Body"].read()))

    def list(self) -> list[OsImageEntry]:
        entries: list[OsImageEntry] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=PREFIX):
                for item in page.get("Contents", []):
                    if item["Key"].endswith(".json"):
                        found = self.get(item["Key"][len(PREFIX) : -len(".json")])
                        if found is not None:
                            entries.append(found)
        except Exception as exc:
            if _code(exc) == "NoSuchBucket":
                return []
            raise
        return entries

    def create(self, entry: OsImageEntry) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=_key(entry.os_image_hash),
                Body=_encode(entry),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412"):
                raise OsImageExists(f"{entry.name} exists already") from None
            if _code(exc) == "NoSuchBucket":
                raise OsImageStoreUnavailable("the bucket does not exist yet") from None
            raise

    def replace(self, entry: OsImageEntry) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=_key(entry.os_image_hash),
            Body=_encode(entry),
            ContentType="application/json",
        )

    def delete(self, os_image_hash: str) -> None:
        if self.get(os_image_hash) is None:
            raise OsImageNotFound(f"osImages/{os_image_hash} not found")
        self.client.delete_object(Bucket=self.bucket, Key=_key(os_image_hash))


def build_os_image_store(settings: ReportStoreSettings) -> OsImageStore:
    if settings.uses_s3:
        return S3OsImageStore(settings)
    return LocalOsImageStore(settings.local_dir)


def _legacy_entry(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """The first allowlist format ({version, mrtd.., vm_config}) as an entry."""
    vm_config = doc.get("vm_config") or {}
    if not isinstance(vm_config, dict):
        raise EvidenceMalformed(f"{where}.vm_config", "expected an object")
    return {
        "os_image_hash": vm_config.get("os_image_hash"),
        "version": doc.get("version"),
        "source": "imported",
        "source_detail": str(doc.get("source", "")),
        "measurements": [
            {"vm_shape": shape_of(vm_config, f"{where}.vm_config")}
            | {r: doc.get(r) for r in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}
        ],
    }


def load_entry_files(paths: Iterable[Path]) -> tuple[OsImageEntry, ...]:
    """Entries from files of the form {"images": [entry, ...]}."""
    entries: list[OsImageEntry] = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise OsImageFileError(f"cannot read OS image file {path}: {exc}") from None
        items = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise OsImageFileError(f"{path}: expected an object with an 'images' array")
        for i, item in enumerate(items):
            where = f"{path}: images[{i}]"
            try:
                if isinstance(item, dict) and "measurements" not in item:
                    item = _legacy_entry(item, where)
                entries.append(entry_from_dict(item, where))
            except EvidenceMalformed as exc:
                raise OsImageFileError(str(exc)) from None
    return tuple(entries)


class OsImageCatalog:
    """What the os check looks entries up in: the store first, then the
    read-only entries. Lookups are cached for `ttl` seconds (0: never)."""

    def __init__(
        self,
        fixed: tuple[OsImageEntry, ...] = (),
        store: OsImageStore | None = None,
        ttl: float = 5.0,
    ) -> None:
        self.fixed = {e.os_image_hash: e for e in fixed}
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, OsImageEntry | None]] = {}
        self._lock = threading.Lock()

    def find(self, os_image_hash: str) -> OsImageEntry | None:
        """Raises whatever the store raises: the check reports it as `error`."""
        if self.store is None:
            return self.fixed.get(os_image_hash)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(os_image_hash)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        found = self.store.get(os_image_hash) or self.fixed.get(os_image_hash)
        with self._lock:
            self._cache[os_image_hash] = (now, found)
        return found

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
