"""The adoption rule (adoption.py): which stored report of an earlier attempt
of the run may stand for a new attempt."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.verification import adoption
from services.verification.report import canonical_json, public_key_bytes

TASK = "00000001-0000-4000-8000-000000000000"
KEY = Ed25519PrivateKey.generate()
PUBLIC = public_key_bytes(KEY)


def _report(
    task_id: str = TASK, attempt: int = 1, key: Ed25519PrivateKey = KEY
) -> tuple[bytes, bytes]:
    body = canonical_json({"task_id": task_id, "attempt": attempt, "verdict": "passed"})
    return body, key.sign(body)


def test_a_report_signed_by_our_key_naming_this_task_and_attempt_is_adopted() -> None:
    assert adoption.refusal(*_report(), PUBLIC, TASK, 1) == ""


def test_a_report_whose_signature_fails_is_refused() -> None:
    body, _ = _report()
    assert "signature" in adoption.refusal(body, bytes(64), PUBLIC, TASK, 1)
    assert "signature" in adoption.refusal(body, b"short", PUBLIC, TASK, 1)
    other_key = Ed25519PrivateKey.generate()
    assert "signature" in adoption.refusal(*_report(key=other_key), PUBLIC, TASK, 1)


def test_a_report_naming_another_task_or_attempt_is_refused() -> None:
    other = "00000002-0000-4000-8000-000000000000"
    assert "task" in adoption.refusal(*_report(task_id=other), PUBLIC, TASK, 1)
    assert "attempt" in adoption.refusal(*_report(attempt=2), PUBLIC, TASK, 1)


def test_candidates_are_the_runs_earlier_attempts_with_a_report_newest_first() -> None:
    assert adoption.candidates((1, 2, 3), (1, 3, 7)) == [3, 1]
    # An operator retry: the tasks service names no attempt of the earlier run.
    assert adoption.candidates((), (1, 2)) == []
