"""Where signed reports live: a local folder (embedded default) or S3, same layout.

Layout: `reports/{task_id}.json` holds the canonical report and
`....json.sig` beside it holds the raw Ed25519 signature. The key is a
function of the task id alone, so GetReport finds a task's report without an
index, and a retried verification of the same task replaces its report.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EvidenceMalformed, ReportNotFound
from .settings import ReportStoreSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY = re.compile(r"^reports/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")
SIGNATURE_SUFFIX = ".sig"
JSON = "application/json"


def report_key(task_id: str) -> str:
    if not _TASK_ID.match(task_id):
        raise EvidenceMalformed("task_id", "unusable in a storage key")
    return f"reports/{task_id}.json"


def _check_key(key: str) -> str:
    # Keys reach us from GetReport requests: only our own layout is accepted,
    # which also rules out path traversal in the folder store.
    if not _KEY.match(key):
        raise ReportNotFound(f"no report under key {key!r}", field="key")
    return key


@dataclass(frozen=True)
class StoredReport:
    key: str
    body: bytes
    signature: bytes
    content_type: str = JSON


class ReportStore(abc.ABC):
    @abc.abstractmethod
    def put(self, key: str, body: bytes, signature: bytes, content_type: str = JSON) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> StoredReport:
        """Raises ReportNotFound."""


class LocalReportStore(ReportStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, body: bytes, signature: bytes, content_type: str = JSON) -> None:
        path = self.root / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Signature first, body last (each atomically): a reader that finds the
        # body always finds its signature.
        for target, data in ((Path(f"{path}{SIGNATURE_SUFFIX}"), signature), (path, body)):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)

    def get(self, key: str) -> StoredReport:
        path = self.root / _check_key(key)
        try:
            body = path.read_bytes()
            signature = Path(f"{path}{SIGNATURE_SUFFIX}").read_bytes()
        except FileNotFoundError:
            raise ReportNotFound(f"no report under key {key!r}", field="key") from None
        return StoredReport(key=key, body=body, signature=signature)


class S3ReportStore(ReportStore):
    def __init__(self, settings: ReportStoreSettings, client: S3Client | None = None) -> None:
        self.bucket = settings.s3_bucket
        if client is None:
            import boto3  # imported here: pool workers and the CLI never need it
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=settings.s3_endpoint or None,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id or None,
                aws_secret_access_key=settings.s3_secret_access_key or None,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        self.client: Any = client
        if settings.s3_create_bucket:
            self.ensure_bucket()

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(self, key: str, body: bytes, signature: bytes, content_type: str = JSON) -> None:
        _check_key(key)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key + SIGNATURE_SUFFIX,
            Body=signature,
            ContentType="application/octet-stream",
        )
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            Metadata={"signature": signature.hex()},
        )

    def get(self, key: str) -> StoredReport:
        from botocore.exceptions import ClientError

        _check_key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "NoSuchKey",
                "NoSuchBucket",
                "404",
                "NotFound",
            ):
                raise ReportNotFound(f"no report under key {key!r}", field="key") from None
            raise
        body = obj["Body"].read()
        signature_hex = obj.get("Metadata", {}).get("signature", "")
        if signature_hex:
            signature = bytes.fromhex(signature_hex)
        else:
            sig_obj = self.client.get_object(Bucket=self.bucket, Key=key + SIGNATURE_SUFFIX)
            signature = sig_obj["Body"].read()
        return StoredReport(
            key=key, body=body, signature=signature, content_type=obj.get("ContentType", JSON)
        )


def build_report_store(settings: ReportStoreSettings) -> ReportStore:
    if settings.uses_s3:
        return S3ReportStore(settings)
    return LocalReportStore(settings.local_dir)
