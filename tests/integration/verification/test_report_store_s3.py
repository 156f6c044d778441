"""The S3 report store over HTTP (SeaweedFS): one conditional PUT per report,
written once, server-side encryption at rest."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.verification.errors import ReportNotFound
from services.verification.report_store import ReportExists, S3ReportStore, report_key
from services.verification.settings import ReportStoreSettings
from tests.support.servers import S3Server

pytestmark = pytest.mark.integration

SIGNATURE = bytes(range(64))


def _settings(s3: S3Server, **overrides: object) -> ReportStoreSettings:
    settings = ReportStoreSettings(
        s3_endpoint=s3.endpoint,
        s3_bucket=f"reports-{uuid.uuid4().hex[:12]}",
        s3_region=s3.region,
        s3_access_key_id=s3.access_key_id or "test",
        s3_secret_access_key=s3.secret_access_key or "test",
        s3_create_bucket=True,
    )
    return replace(settings, **overrides)  # type: ignore[arg-type]


def _count_requests(store: S3ReportStore) -> Counter[str]:
    """Every S3 request the store sends, by operation: boto3's, and the PUTs of
    its lean signed path."""
    sent: Counter[str] = Counter()

    def count(model: object, **_: object) -> None:
        sent[getattr(model, "name", "?")] += 1

    def count_put(headers: dict[str, str]) -> None:
        sent["PutObject"] += 1

    store.client.meta.events.register("before-call.s3", count)
    assert store.signed_put is not None, "reports are written by the lean PUT"
    store.signed_put.on_send = count_put
    return sent


def test_a_report_is_one_conditional_put_with_its_signature_in_the_metadata(
    s3: S3Server,
) -> None:
    store = S3ReportStore(_settings(s3))
    assert store.probe_conditional_put() is True  # SeaweedFS honours If-None-Match
    sent = _count_requests(store)
    key = report_key("task-42", 1)
    store.create(key, b'{"verdict":"passed"}', SIGNATURE)
    assert sent == Counter({"PutObject": 1})
    stored = store.get(key)
    assert (stored.body, stored.signature) == (b'{"verdict":"passed"}', SIGNATURE)
    head = store.client.head_object(Bucket=store.bucket, Key=key)
    assert head["Metadata"]["signature"] == SIGNATURE.hex()
    # Nothing beside the report: no separate signature object any more.
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix="reports/")
    assert [item["Key"] for item in listed["Contents"]] == [key]


def test_a_second_write_of_the_same_attempt_is_refused_and_the_first_stays(
    s3: S3Server,
) -> None:
    store = S3ReportStore(_settings(s3))
    key = report_key("task-42", 1)
    store.create(key, b'{"verdict":"passed"}', SIGNATURE)
    with pytest.raises(ReportExists):
        store.create(key, b'{"verdict":"failed"}', bytes(64))
    assert store.get(key).body == b'{"verdict":"passed"}'


def test_without_conditional_put_a_head_first_refuses_the_second_write(s3: S3Server) -> None:
    store = S3ReportStore(_settings(s3))
    store.conditional_put = False  # as for a store found to ignore If-None-Match
    sent = _count_requests(store)
    key = report_key("task-42", 1)
    store.create(key, b'{"verdict":"passed"}', SIGNATURE)
    assert sent == Counter({"HeadObject": 1, "PutObject": 1})
    with pytest.raises(ReportExists):
        store.create(key, b'{"verdict":"failed"}', bytes(64))
    assert sent["PutObject"] == 1
    assert store.get(key).body == b'{"verdict":"passed"}'


def test_latest_key_lists_the_attempts_of_one_task(s3: S3Server) -> None:
    store = S3ReportStore(_settings(s3))
    with pytest.raises(ReportNotFound):
        store.latest_key("task-42")
    for attempt in (1, 11, 2):
        store.create(report_key("task-42", attempt), b"{}", SIGNATURE)
    store.create(report_key("task-420", 99), b"{}", SIGNATURE)  # another task's prefix
    assert store.latest_key("task-42") == "reports/task-42/11.json"


def _stored_anywhere(data_dir: str, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in Path(data_dir).rglob("*") if path.is_file())


def test_with_s3_sse_the_stored_bytes_hold_no_plaintext(s3: S3Server) -> None:
    if not s3.data_dir:
        pytest.skip("the S3 server's storage is not on this machine (S3_ENDPOINT set)")
    plain_marker, sealed_marker = (f"marker-{uuid.uuid4().hex}".encode() for _ in range(2))
    plain = S3ReportStore(_settings(s3))
    plain.create(report_key("task-plain", 1), b'{"m":"' + plain_marker + b'"}', SIGNATURE)
    sealed = S3ReportStore(_settings(s3, s3_sse="AES256"))
    sealed.create(report_key("task-sealed", 1), b'{"m":"' + sealed_marker + b'"}', SIGNATURE)
    head = sealed.client.head_object(Bucket=sealed.bucket, Key=report_key("task-sealed", 1))
    assert head["ServerSideEncryption"] == "AES256"
    # The store hands it back to a caller with access, decrypted ...
    assert sealed_marker in sealed.get(report_key("task-sealed", 1)).body
    # ... but its files on disk do not hold it, while they do hold the plain one.
    assert _stored_anywhere(s3.data_dir, plain_marker)
    assert not _stored_anywhere(s3.data_dir, sealed_marker)


def test_sse_kms_puts_carry_the_key_id(s3: S3Server) -> None:
    store = S3ReportStore(_settings(s3, s3_sse="aws:kms", s3_sse_kms_key_id="alias/reports"))
    store.conditional_put = True
    headers: list[dict[str, str]] = []

    def capture(request: Any, **_: object) -> None:
        headers.append({k.lower(): _text(v) for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3.PutObject", capture)
    assert store.signed_put is not None
    store.signed_put.on_send = lambda sent: headers.append({k.lower(): v for k, v in sent.items()})
    # This SeaweedFS has no KMS configured: the PUT may be refused; what is
    # checked is what the service asked for.
    with contextlib.suppress(Exception):
        store.create(report_key("task-kms", 1), b"{}", SIGNATURE)
    assert headers and headers[0]["x-amz-server-side-encryption"] == "aws:kms"
    assert headers[0]["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/reports"
    assert headers[0]["if-none-match"] == "*"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_a_batch_is_one_conditional_put_each_and_a_taken_key_refuses_only_its_own(
    s3: S3Server,
) -> None:
    store = S3ReportStore(_settings(s3))
    taken = report_key("task-batch", 2)
    store.create(taken, b'{"first":1}', SIGNATURE)
    sent = _count_requests(store)
    keys = [report_key("task-batch", attempt) for attempt in (1, 2, 3)]
    faults = store.create_many([(key, b'{"n":1}', SIGNATURE) for key in keys])
    assert [type(fault) for fault in faults] == [type(None), ReportExists, type(None)]
    assert sent == Counter({"PutObject": 3})
    assert store.get(taken).body == b'{"first":1}'
    for key in (keys[0], keys[2]):
        stored = store.get(key)
        assert (stored.body, stored.signature) == (b'{"n":1}', SIGNATURE)
