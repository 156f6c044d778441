"""Jobs as messages, task ids, the Verify request built from a task, proto mapping."""

from __future__ import annotations

import json

import pytest
from verifier.queue.v1 import queue_pb2

from services.queue import broker
from services.queue.errors import InvalidTaskId
from services.queue.model import (
    Job,
    JobResult,
    Outcome,
    QueueStatusView,
    WorkerInfo,
    WorkerRecord,
    WorkerState,
    validate_task_id,
    worker_info_from_json,
)
from services.queue.policy import sort_workers
from services.queue.server import status_to_proto, worker_to_proto


def test_job_message_is_taskiq_json_with_task_id_and_attempt_only() -> None:
    data = broker.encode_job(Job("job-1", "task-1", 2))
    message = json.loads(data)  # JSON, never pickle
    assert message["task_name"] == broker.TASK_NAME
    assert message["task_id"] == "job-1"
    assert message["kwargs"] == {"task_id": "task-1", "attempt": 2, "first_fault_at": 0.0}
    assert message["labels"]["ack_type"] == "when_executed"
    assert broker.decode_job(data) == Job("job-1", "task-1", 2)


def test_retry_keeps_the_job_id_and_counts_the_attempt() -> None:
    retry = JobResult(Outcome.RETRY, "down", delay_seconds=1.0, first_fault_at=50.0)
    assert Job("j", "t", 1).retried(retry) == Job("j", "t", 2, first_fault_at=50.0)
    # A retry is a new stream entry: its delivery count starts again.
    assert Job("j", "t", 1, deliveries=3).retried(retry).deliveries == 1


def test_retry_keeps_the_first_fault_time_and_a_busy_wait_is_no_attempt() -> None:
    later = JobResult(Outcome.RETRY, "down", first_fault_at=0.0)
    assert Job("j", "t", 3, first_fault_at=20.0).retried(later).first_fault_at == 20.0
    busy = JobResult(Outcome.RETRY, "held", same_attempt=True)
    assert Job("j", "t", 3).retried(busy).attempt == 3


def test_first_fault_time_travels_in_the_message() -> None:
    job = Job("job-1", "task-1", 4, first_fault_at=1_700_000_000.5)
    assert broker.decode_job(broker.encode_job(job)) == job


@pytest.mark.parametrize("task_id", ["", "a b", "x" * 129, "../etc", "id\n"])
def test_malformed_task_id_is_invalid_argument_naming_the_field(task_id: str) -> None:
    with pytest.raises(InvalidTaskId) as caught:
        validate_task_id(task_id)
    assert caught.value.field == "task_id"


def test_uuid_task_id_is_accepted() -> None:
    assert validate_task_id("3f2b8c1e-8f1d-4a57-9d56-0c7f2b1f4e11")


def test_keys_of_one_queue_share_a_cluster_hash_tag() -> None:
    keys = broker.QueueKeys("verification-queue")
    for key in (keys.stream, keys.delayed, keys.job("t"), keys.lock("t"), keys.worker("w")):
        assert "{verification-queue}" in key


def test_status_maps_every_count() -> None:
    view = QueueStatusView("q", True, 1, 2, 3, 4, 5, 6, 7, "redis", ("queue paused",))
    assert status_to_proto(view) == queue_pb2.QueueStatus(
        queue_name="q",
        paused=True,
        waiting=1,
        active=2,
        delayed=3,
        completed=4,
        failed=5,
        workers_online=6,
        concurrency=7,
        backend="redis",
        idle_reasons=["queue paused"],
    )


def test_worker_record_round_trips_through_its_heartbeat_json() -> None:
    record = WorkerRecord("w1", "host", 42, 1000.5, 5, {"t2", "t1"}, 7, "queue paused")
    info = worker_info_from_json(record.to_json(1010.25), WorkerState.OFFLINE)
    assert info == WorkerInfo(
        "w1", "host", 42, 1000.5, 1010.25, WorkerState.OFFLINE, ("t1", "t2"), 5, 7, "queue paused"
    )
    assert record.info(1010.25, WorkerState.OFFLINE) == info
    proto = worker_to_proto(info)
    assert proto.idle_reason == "queue paused"
    assert proto.state == queue_pb2.WORKER_STATE_OFFLINE
    assert proto.started_at.ToNanoseconds() == 1_000_500_000_000
    assert list(proto.jobs_in_hand) == ["t1", "t2"]


def test_workers_are_listed_newest_start_first() -> None:
    def worker(worker_id: str, started: float) -> WorkerInfo:
        return WorkerInfo(worker_id, "h", 1, started, started, WorkerState.ONLINE, (), 1, 0)

    ordered = sort_workers([worker("a", 1.0), worker("b", 3.0), worker("c", 2.0)])
    assert [w.id for w in ordered] == ["b", "c", "a"]
