"""Every public key that has signed reports, kept in the service's own store.

Each replica records its key at start (`keys/{key_id}.pub`, the raw key as
hex) in the report store's folder or bucket, so `/.well-known/jwks.json` can
publish the current key and the earlier ones: a report or token signed
before a rotation stays checkable.
"""

from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import Any

from .report import key_id
from .s3 import s3_client
from .settings import ReportStoreSettings

PREFIX = "keys/"
_NAME = re.compile(r"^[0-9a-f]{64}\.pub$")


def _parse(data: bytes) -> bytes | None:
    try:
        raw = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return raw if len(raw) == 32 else None


class KeyHistory(abc.ABC):
    @abc.abstractmethod
    def record(self, public_key: bytes) -> None: ...

    @abc.abstractmethod
    def public_keys(self) -> list[bytes]:
        """Every recorded raw Ed25519 public key, ordered by key id."""


class LocalKeyHistory(KeyHistory):
    def __init__(self, root: Path) -> None:
        self.folder = root / PREFIX

    def record(self, public_key: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key_id(public_key)}.pub"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(public_key.hex())
            tmp.replace(path)

    def public_keys(self) -> list[bytes]:
        if not self.folder.is_dir():
            return []
        found = (
            _parse(p.read_bytes()) for p in sorted(self.folder.iterdir()) if _NAME.match(p.name)
        )
        return [k for k in found if k is not None]


class S3KeyHistory(KeyHistory):
    def __init__(self, settings: ReportStoreSettings, client: Any = None) -> None:
        self.bucket = settings.s3_bucket
        self.client = client or s3_client(settings)

    def record(self, public_key: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=f"{PREFIX}{key_id(public_key)}.pub",
            Body=public_key.hex().encode("ascii"),
            ContentType="text/plain",
        )

    def public_keys(self) -> list[bytes]:
        keys: list[bytes] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=PREFIX):
                for item in page.get("Contents", []):
                    if not _NAME.match(item["Key"][len(PREFIX) :]):
                        continue
                    obj = self.client.get_object(Bucket=self.bucket, Key=item["Key"])
                    parsed = _parse(obj["Body"].read())
                    if parsed is not None:
                        keys.append(parsed)
        except Exception as exc:
            # No bucket yet (created in the background at start): no earlier keys.
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise
        return keys


def build_key_history(settings: ReportStoreSettings) -> KeyHistory:
    if settings.uses_s3:
        return S3KeyHistory(settings)
    return LocalKeyHistory(settings.local_dir)
