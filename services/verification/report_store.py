"""Where signed reports live: a local folder (embedded default) or S3.

Layout: one object per report, `reports/<task_id>/<attempt>.json`, written
once. A task's attempt (its lease) names the report, so a retried
verification under a new attempt never touches an earlier one, and a second
write of the same attempt is refused (ReportExists) instead of overwriting.

- S3: the object is the canonical report JSON; its Ed25519 signature is in
  the object's metadata (`x-amz-meta-signature`, hex). One PUT per report, with
  `If-None-Match: *` where the store honours it (probed once per process:
  SeaweedFS and AWS S3 do), else a HEAD first and a refusal when the key
  exists. `S3_SSE` adds the server-side encryption headers to the PUT.
- Folder: the file holds the report and its signature (envelope.py), made with
  an exclusive create (written aside, then hard-linked into place: readers see
  all of it or nothing). With a key configured it is envelope-encrypted.
"""

from __future__ import annotations

import abc
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import envelope
from .errors import EvidenceMalformed, ReportNotFound
from .s3 import SignedPut, s3_client
from .settings import ReportStoreSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ATTEMPT = r"(?:0|[1-9][0-9]{0,9})"
_KEY = re.compile(rf"^reports/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}/{_ATTEMPT}\.json$")
_ATTEMPT_FILE = re.compile(rf"^({_ATTEMPT})\.json$")
JSON = "application/json"
_PROBE_PREFIX = "_probes/write-once-"
_NOT_FOUND_CODES = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")


class ReportExists(Exception):
    """The key already holds a report: reports are written once."""


class ReportUnreadable(Exception):
    """A stored report that cannot be read back (damaged, or encrypted with
    another key than the configured one)."""


def check_task_id(task_id: str) -> str:
    if not _TASK_ID.match(task_id):
        raise EvidenceMalformed("task_id", "unusable in a storage key")
    return task_id


def report_key(task_id: str, attempt: int) -> str:
    if not 0 <= attempt <= 2**31 - 1:
        raise EvidenceMalformed("attempt", "must be 0 or a positive attempt number")
    return f"reports/{check_task_id(task_id)}/{attempt}.json"


def _task_prefix(task_id: str) -> str:
    return f"reports/{check_task_id(task_id)}/"


def _attempts(names: list[str]) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_ATTEMPT_FILE.match, names) if m)


def _latest(task_id: str, attempts: list[int]) -> str:
    if not attempts:
        raise ReportNotFound(f"no report for task {task_id!r}", field="task_id")
    return f"{_task_prefix(task_id)}{max(attempts)}.json"


def _check_key(key: str) -> str:
    # Only our own layout is accepted, which also rules out path traversal in
    # the folder store.
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
    def create(self, key: str, body: bytes, signature: bytes) -> None:
        """Store a report under a new key; raises ReportExists when the key is taken."""

    def create_many(self, reports: list[tuple[str, bytes, bytes]]) -> list[Exception | None]:
        """create() of each (key, body, signature): each one's fault
        (ReportExists, ...) or None; one report's fault never stops another."""
        faults: list[Exception | None] = []
        for key, body, signature in reports:
            try:
                self.create(key, body, signature)
            except Exception as exc:
                faults.append(exc)
            else:
                faults.append(None)
        return faults

    @abc.abstractmethod
    def get(self, key: str) -> StoredReport:
        """Raises ReportNotFound, or ReportUnreadable."""

    @abc.abstractmethod
    def stored_attempts(self, task_id: str) -> list[int]:
        """The attempts of the task that have a report, ascending (one listing)."""

    def latest_key(self, task_id: str) -> str:
        """The key of the task's report with the highest attempt; raises ReportNotFound."""
        return _latest(task_id, self.stored_attempts(task_id))

    @abc.abstractmethod
    def delete_task(self, task_id: str) -> int:
        """Delete every report of the task (all attempts); returns how many there
        were. A task without reports is 0, not an error (retention)."""


class LocalReportStore(ReportStore):
    def __init__(self, root: Path, encryption_key: bytes = b"") -> None:
        if encryption_key and len(encryption_key) != envelope.KEY_BYTES:
            raise ValueError("the report encryption key must be 32 bytes")
        self.root = root
        self.encryption_key = encryption_key

    def create(self, key: str, body: bytes, signature: bytes) -> None:
        path = self.root / _check_key(key)
        data = envelope.pack(body, signature)
        if self.encryption_key:
            data = envelope.seal(self.encryption_key, data, key.encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        aside.write_bytes(data)
        try:
            os.link(aside, path)  # atomic, and fails when the name exists
        except FileExistsError:
            raise ReportExists(key) from None
        finally:
            aside.unlink(missing_ok=True)

    def get(self, key: str) -> StoredReport:
        path = self.root / _check_key(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ReportNotFound(f"no report under key {key!r}", field="key") from None
        try:
            if envelope.is_sealed(data):
                data = envelope.open_sealed(self.encryption_key, data, key.encode())
            body, signature = envelope.unpack(data)
        except envelope.EnvelopeError as exc:
            raise ReportUnreadable(f"{key}: {exc}") from None
        return StoredReport(key=key, body=body, signature=signature)

    def stored_attempts(self, task_id: str) -> list[int]:
        folder = self.root / _task_prefix(task_id)
        try:
            names = [entry.name for entry in os.scandir(folder)]
        except FileNotFoundError:
            names = []
        return _attempts(names)

    def delete_task(self, task_id: str) -> int:
        folder = self.root / _task_prefix(task_id)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return 0
        deleted = 0
        for entry in entries:
            if _ATTEMPT_FILE.match(entry.name):
                deleted += 1
            Path(entry.path).unlink(missing_ok=True)  # aside files of a write that died too
        folder.rmdir()
        return deleted


class S3ReportStore(ReportStore):
    def __init__(self, settings: ReportStoreSettings, client: S3Client | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.client: Any = client or s3_client(settings)
        # The report PUT without boto3's per-call cost (s3.py); boto3 for the
        # rest, and for everything when a client is handed in.
        self.signed_put = SignedPut.of(settings) if client is None else None
        self.sse: dict[str, str] = {}
        self.sse_headers: dict[str, str] = {}
        if settings.s3_sse:
            self.sse["ServerSideEncryption"] = settings.s3_sse
            self.sse_headers["x-amz-server-side-encryption"] = settings.s3_sse
            if settings.s3_sse == "aws:kms" and settings.s3_sse_kms_key_id:
                self.sse["SSEKMSKeyId"] = settings.s3_sse_kms_key_id
                self.sse_headers["x-amz-server-side-encryption-aws-kms-key-id"] = (
                    settings.s3_sse_kms_key_id
                )
        # Whether the store honours If-None-Match on PUT; None until probed.
        self.conditional_put: bool | None = None
        self._probe_lock = threading.Lock()
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

    def _headers(self, metadata: dict[str, str], conditional: bool) -> dict[str, str]:
        """The lean PUT's headers (SignedPut)."""
        return {
            "Content-Type": JSON,
            **{f"x-amz-meta-{name}": value for name, value in metadata.items()},
            **({"If-None-Match": "*"} if conditional else {}),
            **self.sse_headers,
        }

    def _put(self, key: str, body: bytes, metadata: dict[str, str], conditional: bool) -> None:
        if self.signed_put is not None:
            self.signed_put.put(key, body, self._headers(metadata, conditional))
            return
        extra = {"IfNoneMatch": "*"} if conditional else {}
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=JSON,
            Metadata=metadata,
            **extra,
            **self.sse,
        )

    def probe_conditional_put(self) -> bool:
        """Does the store refuse a second `If-None-Match: *` PUT? A store that
        ignores the header would let a report be overwritten, so it is asked
        once, on a probe object, rather than assumed."""
        with self._probe_lock:
            if self.conditional_put is not None:
                return self.conditional_put
            probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
            try:
                self._put(probe, b"{}", {}, conditional=True)
                try:
                    self._put(probe, b"{}", {}, conditional=True)
                    honoured = False
                except Exception as exc:
                    kind = _error_kind(exc)
                    if kind not in ("exists", "unsupported"):
                        raise
                    honoured = kind == "exists"
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=probe)
            self.conditional_put = honoured
            return honoured

    def create(self, key: str, body: bytes, signature: bytes) -> None:
        _check_key(key)
        conditional = self.probe_conditional_put()
        if not conditional and self._exists(key):
            raise ReportExists(key)
        try:
            self._put(key, body, {"signature": signature.hex()}, conditional)
        except Exception as exc:
            if _error_kind(exc) == "exists":
                raise ReportExists(key) from None
            raise

    def create_many(self, reports: list[tuple[str, bytes, bytes]]) -> list[Exception | None]:
        """With conditional PUTs on the lean path, every PUT is sent at once
        (the store works on them side by side); else one create() each."""
        if self.signed_put is None or not self.probe_conditional_put():
            return super().create_many(reports)
        faults = self.signed_put.put_many(
            [
                (_check_key(key), body, self._headers({"signature": signature.hex()}, True))
                for key, body, signature in reports
            ]
        )
        return [
            ReportExists(key) if fault is not None and _error_kind(fault) == "exists" else fault
            for (key, _, _), fault in zip(reports, faults, strict=True)
        ]

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_kind(exc) == "missing":
                return False
            raise
        return True

    def get(self, key: str) -> StoredReport:
        _check_key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_kind(exc) == "missing":
                raise ReportNotFound(f"no report under key {key!r}", field="key") from None
            raise
        body = obj["Body"].read()
        try:
            signature = bytes.fromhex(obj.get("Metadata", {}).get("signature", ""))
        except ValueError:
            signature = b""
        if len(signature) != 64:
            raise ReportUnreadable(f"{key}: the object carries no signature")
        return StoredReport(
            key=key, body=body, signature=signature, content_type=obj.get("ContentType", JSON)
        )

    def stored_attempts(self, task_id: str) -> list[int]:
        prefix = _task_prefix(task_id)
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **token)
            names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return _attempts(names)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete_task(self, task_id: str) -> int:
        """DeleteObjects over the task's prefix, a listing page (at most 1000
        keys) a call. On a versioned bucket this adds delete markers: earlier
        versions stay until the bucket's lifecycle rule expires them."""
        prefix = _task_prefix(task_id)
        deleted = 0
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1000)
            keys = [item["Key"] for item in page.get("Contents", [])]
            if not keys:
                return deleted
            reply = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
            errors = reply.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(
                    f"{len(errors)} of {len(keys)} report objects of {task_id} not deleted: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
            deleted += sum(1 for key in keys if _ATTEMPT_FILE.match(key[len(prefix) :]))


def _error_kind(exc: Exception) -> str:
    """'exists' (a conditional PUT refused), 'missing', 'unsupported' or ''."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "PreconditionFailed" or status == 412:
        return "exists"
    if code in _NOT_FOUND_CODES or status == 404:
        return "missing"
    if code == "NotImplemented" or status == 501:
        return "unsupported"
    return ""


def build_report_store(settings: ReportStoreSettings) -> ReportStore:
    """The store the settings select: S3 when they name a bucket, else the folder."""
    if settings.uses_s3:
        return S3ReportStore(settings)
    return LocalReportStore(settings.local_dir, settings.local_encryption_key)
