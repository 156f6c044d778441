"""The folder report store: one file per task and attempt, written once,
optionally envelope-encrypted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.verification import envelope
from services.verification.errors import EvidenceMalformed, ReportNotFound
from services.verification.report_store import (
    LocalReportStore,
    ReportExists,
    ReportUnreadable,
    report_key,
)

BODY = b'{"task_id":"task-42","verdict":"passed"}'
SIGNATURE = bytes(range(64))
KEY = bytes(range(32))


def test_report_key_names_the_task_and_the_attempt() -> None:
    assert report_key("task-1", 3) == "reports/task-1/3.json"
    assert report_key("task-1", 0) == "reports/task-1/0.json"
    with pytest.raises(EvidenceMalformed, match="task_id"):
        report_key("../x", 1)
    with pytest.raises(EvidenceMalformed, match="attempt"):
        report_key("task-1", -1)


def test_folder_round_trip_keeps_the_signed_bytes_and_the_signature(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    store.create(report_key("task-42", 1), BODY, SIGNATURE)
    stored = store.get(report_key("task-42", 1))
    assert (stored.body, stored.signature) == (BODY, SIGNATURE)
    # One file, valid JSON, holding both: any tool can read it.
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["reports/task-42/1.json"]
    on_disk = json.loads((tmp_path / "reports/task-42/1.json").read_bytes())
    assert on_disk == {"signature": SIGNATURE.hex(), "report": json.loads(BODY)}


def test_a_second_write_of_the_same_attempt_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    store = LocalReportStore(tmp_path)
    key = report_key("task-42", 1)
    store.create(key, BODY, SIGNATURE)
    with pytest.raises(ReportExists):
        store.create(key, b'{"verdict":"failed"}', bytes(64))
    assert store.get(key).body == BODY
    # Nothing is left aside by the refused write.
    assert os.listdir(tmp_path / "reports/task-42") == ["1.json"]


def test_latest_key_is_the_highest_attempt(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    with pytest.raises(ReportNotFound):
        store.latest_key("task-42")
    for attempt in (2, 10, 9):
        store.create(report_key("task-42", attempt), BODY, SIGNATURE)
    assert store.latest_key("task-42") == "reports/task-42/10.json"


def test_unknown_keys_and_traversal_are_not_found(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    with pytest.raises(ReportNotFound):
        store.get(report_key("task-43", 1))
    with pytest.raises(ReportNotFound):
        store.get("reports/../../etc/passwd")


def test_an_encrypted_report_is_unreadable_without_its_key(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path, encryption_key=KEY)
    key = report_key("task-42", 1)
    store.create(key, BODY, SIGNATURE)
    raw = (tmp_path / key).read_bytes()
    assert raw.startswith(envelope.MAGIC)
    assert b"verdict" not in raw and SIGNATURE.hex().encode() not in raw
    # With the key it reads back exactly.
    assert store.get(key).body == BODY
    assert store.get(key).signature == SIGNATURE
    with pytest.raises(ReportUnreadable, match="no encryption key"):
        LocalReportStore(tmp_path).get(key)
    with pytest.raises(ReportUnreadable, match="another key"):
        LocalReportStore(tmp_path, encryption_key=bytes(32)).get(key)


def test_an_encrypted_report_moved_under_another_task_does_not_open(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path, encryption_key=KEY)
    store.create(report_key("task-a", 1), BODY, SIGNATURE)
    (tmp_path / "reports/task-b").mkdir(parents=True)
    os.link(tmp_path / "reports/task-a/1.json", tmp_path / "reports/task-b/1.json")
    with pytest.raises(ReportUnreadable, match="damaged or was moved"):
        store.get(report_key("task-b", 1))


def test_plain_reports_stay_readable_once_a_key_is_configured(tmp_path: Path) -> None:
    LocalReportStore(tmp_path).create(report_key("task-42", 1), BODY, SIGNATURE)
    assert LocalReportStore(tmp_path, encryption_key=KEY).get(report_key("task-42", 1)).body == BODY


def test_a_damaged_file_is_unreadable_not_a_wrong_report(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    key = report_key("task-42", 1)
    store.create(key, BODY, SIGNATURE)
    (tmp_path / key).write_bytes(b'{"signature":"zz"}')
    with pytest.raises(ReportUnreadable):
        store.get(key)
