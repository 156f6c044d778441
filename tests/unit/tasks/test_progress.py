"""The progress board: what is held in memory and when a report is due to be written."""

from __future__ import annotations

from services.tasks.progress import ProgressBoard


def _board() -> tuple[ProgressBoard, list[float]]:
    now = [100.0]
    return ProgressBoard(lambda: now[0], min_write_seconds=1.0), now


def test_a_report_within_a_second_of_this_processs_start_is_held() -> None:
    board, now = _board()
    board.started("t", 1)
    assert board.progress("t") is None
    assert not board.offer("t", 1, 30, "verifying")
    assert board.progress("t") == 30 and board.progress("t", 1) == 30
    now[0] += 1.0
    assert board.offer("t", 1, 40, "")
    assert not board.offer("t", 1, 50, "")  # a second after that write, not before


def test_a_report_of_an_attempt_this_process_did_not_start_is_written() -> None:
    board, _ = _board()
    assert board.offer("t", 1, 30, "")  # started by another instance
    board.started("u", 2)
    assert board.offer("u", 1, 30, "")  # another attempt: the database decides
    assert board.progress("u", 2) is None and board.progress("u", 1) == 30


def test_progress_never_goes_backwards_and_is_forgotten_when_the_attempt_ends() -> None:
    board, now = _board()
    board.started("t", 1)
    now[0] += 2.0
    assert board.offer("t", 1, 60, "")
    now[0] += 2.0
    assert not board.offer("t", 1, 20, "")
    assert board.progress("t") == 60
    board.forget("t")
    assert board.progress("t") is None and len(board) == 0
