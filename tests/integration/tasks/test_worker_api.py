"""The internal worker contract of the tasks service (TaskWorkerService,
QueueStateService) on both backends: batches in request order, leases
(attempts) that fence stale calls, verdicts recorded only from summaries the
real verification service's key signed, and one audit row per state change.

The verification service runs for real (in-process, on a real socket): the
tasks service fetches its published key with GetSigningKey; the tests sign
summaries with the private key that service loaded from its data folder."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from verifier.tasks.v1 import tasks_pb2, worker_pb2, worker_pb2_grpc
from verifier.verification.v1 import verification_pb2

from .conftest import (
    BACKENDS,
    Harness,
    Verification,
    create_request,
    passing_summary,
    start_harness,
)

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@pytest.fixture(scope="module", params=BACKENDS)
async def wh(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    verification: Verification,
) -> AsyncIterator[Harness]:
    backend: str = request.param
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('worker-sqlite') / 'tasks.db'}"
    harness = await start_harness(backend, url, verification=verification)
    yield harness
    await harness.close()


def worker(h: Harness) -> worker_pb2_grpc.TaskWorkerServiceStub:
    return worker_pb2_grpc.TaskWorkerServiceStub(h.channel)


def key_id(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def signed(
    key: Ed25519PrivateKey,
    task_id: str,
    attempt: int,
    summary: verification_pb2.ReportSummary | None = None,
    *,
    claimed_key_id: str | None = None,
) -> verification_pb2.SignedSummary:
    summary = summary or passing_summary(s3_key=f"reports/{task_id}/{attempt}.json")
    summary.task_id, summary.attempt, summary.signing_key_id = task_id, attempt, key_id(key)
    data = summary.SerializeToString()
    return verification_pb2.SignedSummary(
        summary=data, signature=key.sign(data).hex(), key_id=claimed_key_id or key_id(key)
    )


def completion(
    task_id: str, attempt: int, summary: verification_pb2.SignedSummary
) -> worker_pb2.TaskCompletion:
    return worker_pb2.TaskCompletion(
        task=worker_pb2.TaskAttempt(task_id=task_id, attempt=attempt), signed_summary=summary
    )


async def new_task(h: Harness, **fields: object) -> str:
    return (await h.stub.CreateTask(create_request(**fields))).task.id


async def start(h: Harness, *task_ids: str, worker_id: str = "w1") -> list[worker_pb2.StartedTask]:
    response = await worker(h).StartTasks(
        worker_pb2.StartTasksRequest(worker_id=worker_id, task_ids=list(task_ids))
    )
    return list(response.tasks)


async def get(h: Harness, task_id: str) -> tasks_pb2.Task:
    return (await h.stub.GetTask(tasks_pb2.GetTaskRequest(id=task_id))).task


async def event_types(h: Harness, task_id: str) -> list[str]:
    events = (await h.stub.ListTaskEvents(tasks_pb2.ListTaskEventsRequest(id=task_id))).events
    return [event.type for event in events]


async def complete(h: Harness, *items: worker_pb2.TaskCompletion) -> list[int]:
    response = await worker(h).CompleteTasks(
        worker_pb2.CompleteTasksRequest(worker_id="w1", tasks=list(items))
    )
    return [ack.status.code for ack in response.acks]


async def test_start_answers_each_task_in_request_order(wh: Harness) -> None:
    first, second = await new_task(wh), await new_task(wh)
    unknown = str(uuid.uuid4())
    started = await start(wh, first, unknown, "not-a-uuid", second)
    assert [s.status.code for s in started] == [OK, NOT_FOUND, INVALID_ARGUMENT, OK]
    assert [s.attempt for s in started] == [1, 0, 0, 1]
    assert "task_ids[2]" in started[2].status.message
    assert (await get(wh, first)).status == tasks_pb2.TASK_STATUS_ACTIVE


async def test_a_second_start_opens_a_new_attempt_and_fences_the_first(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    assert (await start(wh, task_id))[0].attempt == 1
    assert (await start(wh, task_id, worker_id="w2"))[0].attempt == 2
    stale = await complete(wh, completion(task_id, 1, signed(verification.key, task_id, 1)))
    assert stale == [FAILED_PRECONDITION]
    assert (await get(wh, task_id)).status == tasks_pb2.TASK_STATUS_ACTIVE
    current = await complete(wh, completion(task_id, 2, signed(verification.key, task_id, 2)))
    assert current == [OK]
    done = await get(wh, task_id)
    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED and done.attempts == 2
    assert done.s3_key == f"reports/{task_id}/2.json"


async def test_forged_completions_are_invalid_argument_and_leave_the_task_unchanged(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    before = await get(wh, task_id)
    other_key = Ed25519PrivateKey.generate()
    # Signed by another key that claims the engine's key id.
    by_other_key = signed(other_key, task_id, 1, claimed_key_id=key_id(verification.key))
    # The engine's signature, over bytes changed afterwards (FAILED made PASSED).
    tampered = signed(verification.key, task_id, 1, passing_summary(verdict=2))
    changed = verification_pb2.ReportSummary.FromString(tampered.summary)
    changed.verdict = verification_pb2.VERDICT_PASSED
    tampered.summary = changed.SerializeToString()
    # A key the engine never used.
    unknown_key = signed(other_key, task_id, 1)
    # Not signed at all.
    unsigned = verification_pb2.SignedSummary(
        summary=passing_summary().SerializeToString(), key_id=key_id(verification.key)
    )
    codes = await complete(
        wh, *(completion(task_id, 1, s) for s in (by_other_key, tampered, unknown_key, unsigned))
    )
    # The first three are each refused; the fourth repeats the id of the first.
    assert codes == [INVALID_ARGUMENT] * 4
    after = await get(wh, task_id)
    assert after.status == tasks_pb2.TASK_STATUS_ACTIVE
    assert (after.verdict, after.s3_key, len(after.check_results)) == (
        before.verdict,
        before.s3_key,
        0,
    )
    assert "completed" not in await event_types(wh, task_id)


async def test_each_forgery_alone_is_refused(wh: Harness, verification: Verification) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    other_key = Ed25519PrivateKey.generate()
    tampered = signed(verification.key, task_id, 1)
    changed = verification_pb2.ReportSummary.FromString(tampered.summary)
    changed.s3_key = "reports/elsewhere.json"
    tampered.summary = changed.SerializeToString()
    for forged in (
        signed(other_key, task_id, 1, claimed_key_id=key_id(verification.key)),
        tampered,
        signed(other_key, task_id, 1),
    ):
        assert await complete(wh, completion(task_id, 1, forged)) == [INVALID_ARGUMENT]
    assert (await get(wh, task_id)).status == tasks_pb2.TASK_STATUS_ACTIVE


async def test_a_summary_signed_for_another_task_or_attempt_is_refused(
    wh: Harness, verification: Verification
) -> None:
    task_id, other = await new_task(wh), await new_task(wh)
    await start(wh, task_id, other)
    for summary in (signed(verification.key, other, 1), signed(verification.key, task_id, 2)):
        assert await complete(wh, completion(task_id, 1, summary)) == [INVALID_ARGUMENT]
    assert (await get(wh, task_id)).status == tasks_pb2.TASK_STATUS_ACTIVE


async def test_one_bad_item_does_not_fail_its_neighbours(
    wh: Harness, verification: Verification
) -> None:
    ids = [await new_task(wh) for _ in range(3)]
    await start(wh, *ids)
    forged = signed(
        Ed25519PrivateKey.generate(), ids[1], 1, claimed_key_id=key_id(verification.key)
    )
    codes = await complete(
        wh,
        completion(ids[0], 1, signed(verification.key, ids[0], 1)),
        completion(ids[1], 1, forged),
        completion(ids[2], 1, signed(verification.key, ids[2], 1)),
        completion(str(uuid.uuid4()), 1, signed(verification.key, ids[2], 1)),
    )
    assert codes[:3] == [OK, INVALID_ARGUMENT, OK]
    assert codes[3] == INVALID_ARGUMENT  # signed for another task
    statuses = [(await get(wh, task_id)).status for task_id in ids]
    assert statuses == [
        tasks_pb2.TASK_STATUS_COMPLETED,
        tasks_pb2.TASK_STATUS_ACTIVE,
        tasks_pb2.TASK_STATUS_COMPLETED,
    ]
    done = await get(wh, ids[0])
    assert done.verdict == verification_pb2.VERDICT_PASSED and len(done.check_results) == 7


async def test_a_repeated_completion_is_ok_and_recorded_once(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    item = completion(task_id, 1, signed(verification.key, task_id, 1))
    assert await complete(wh, item) == [OK]
    assert await complete(wh, item) == [OK]
    types = await event_types(wh, task_id)
    assert types.count("completed") == 1
    assert types in (
        ["created", "queued", "started", "completed"],
        ["created", "started", "completed"],
    )


async def test_the_engines_failed_verdict_is_recorded_naming_the_failed_check(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    summary = passing_summary(verdict=verification_pb2.VERDICT_FAILED)
    summary.checks[1].status = verification_pb2.CHECK_STATUS_FAILED
    summary.checks[1].reason = "MRTD does not match"
    assert await complete(
        wh, completion(task_id, 1, signed(verification.key, task_id, 1, summary))
    ) == [OK]
    done = await get(wh, task_id)
    assert done.status == tasks_pb2.TASK_STATUS_FAILED
    assert "os failed: MRTD does not match" in done.error_message
    assert (await event_types(wh, task_id))[-1] == "failed"


async def test_a_passed_verdict_is_the_engines_and_is_not_recomputed(
    wh: Harness, verification: Verification
) -> None:
    # The engine decides; a skipped check under a PASSED verdict is its call.
    task_id = await new_task(wh)
    await start(wh, task_id)
    summary = passing_summary()
    summary.checks[0].status = verification_pb2.CHECK_STATUS_SKIPPED
    item = completion(task_id, 1, signed(verification.key, task_id, 1, summary))
    assert await complete(wh, item) == [OK]
    assert (await get(wh, task_id)).status == tasks_pb2.TASK_STATUS_COMPLETED


async def test_deferred_task_waits_with_its_reason_then_starts_a_new_attempt(wh: Harness) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    deferral = worker_pb2.TaskDeferral(
        task=worker_pb2.TaskAttempt(task_id=task_id, attempt=1), reason="verification UNAVAILABLE"
    )
    deferral.retry_at.FromSeconds(2_000_000_000)
    for _ in range(2):  # the repeat is an idempotent OK
        response = await worker(wh).DeferTasks(
            worker_pb2.DeferTasksRequest(worker_id="w1", tasks=[deferral])
        )
        assert [a.status.code for a in response.acks] == [OK]
    waiting = await get(wh, task_id)
    assert waiting.status == tasks_pb2.TASK_STATUS_WAITING
    assert waiting.wait_reason == "verification UNAVAILABLE"
    assert waiting.next_attempt_at.seconds == 2_000_000_000
    assert (await start(wh, task_id))[0].attempt == 2
    again = await get(wh, task_id)
    assert again.status == tasks_pb2.TASK_STATUS_ACTIVE and again.wait_reason == ""
    assert (await event_types(wh, task_id)).count("waiting") == 1


async def test_fail_is_fenced_and_idempotent(wh: Harness) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    await start(wh, task_id)

    async def fail(attempt: int) -> int:
        response = await worker(wh).FailTasks(
            worker_pb2.FailTasksRequest(
                worker_id="w1",
                tasks=[
                    worker_pb2.TaskFailure(
                        task=worker_pb2.TaskAttempt(task_id=task_id, attempt=attempt),
                        error_message="evidence malformed",
                    )
                ],
            )
        )
        return response.acks[0].status.code

    assert await fail(1) == FAILED_PRECONDITION
    assert (await get(wh, task_id)).status == tasks_pb2.TASK_STATUS_ACTIVE
    assert await fail(2) == OK
    assert await fail(2) == OK
    failed = await get(wh, task_id)
    assert failed.status == tasks_pb2.TASK_STATUS_FAILED
    assert failed.error_message == "evidence malformed"
    assert (await event_types(wh, task_id)).count("failed") == 1


async def test_task_inputs_are_given_to_the_current_attempt_only(wh: Harness) -> None:
    evidence = verification_pb2.Evidence(quote="ab" * 32, event_log="[]")
    task_id = await new_task(wh, evidence=evidence)
    await start(wh, task_id)
    await start(wh, task_id)
    response = await worker(wh).GetTaskInputs(
        worker_pb2.GetTaskInputsRequest(
            tasks=[
                worker_pb2.TaskAttempt(task_id=task_id, attempt=1),
                worker_pb2.TaskAttempt(task_id=task_id, attempt=2),
            ]
        )
    )
    stale, current = response.tasks
    assert stale.status.code == FAILED_PRECONDITION and not stale.request.task_id
    assert current.status.code == OK
    assert (current.request.task_id, current.request.attempt) == (task_id, 2)
    assert current.request.evidence.quote == "ab" * 32
    assert current.request.flags.hardware and not current.request.flags.dns_caa
    # The earlier attempt of this run, whose report the engine may adopt.
    assert list(current.earlier_attempts) == [1]


async def test_progress_is_published_but_written_at_most_once_a_second(wh: Harness) -> None:
    task_id = await new_task(wh)
    board = wh.service.worker.progress
    now = [1000.0]
    board._clock = lambda: now[0]
    await start(wh, task_id)
    store = wh.service.worker.store

    async def written() -> int:
        return (await store.get_task(task_id)).progress

    async def report(progress: int) -> int:
        response = await worker(wh).ReportProgress(
            worker_pb2.ReportProgressRequest(
                progress=[
                    worker_pb2.TaskProgress(
                        task=worker_pb2.TaskAttempt(task_id=task_id, attempt=1), progress=progress
                    )
                ]
            )
        )
        return response.acks[0].status.code

    assert await report(10) == OK  # held: less than a second since the start's write
    assert await written() == 0
    assert (await get(wh, task_id)).progress == 10, "GetTask shows the held progress"
    now[0] += 1.5
    assert await report(20) == OK
    assert await written() == 20
    assert await report(30) == OK  # held: less than a second since the last write
    assert await written() == 20
    assert board.progress(task_id) == 30
    assert (await get(wh, task_id)).progress == 30
    now[0] += 1.5
    assert await report(40) == OK
    assert await written() == 40
    assert "progress" not in await event_types(wh, task_id)


async def test_progress_for_a_stale_attempt_is_refused(wh: Harness) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    await start(wh, task_id)
    response = await worker(wh).ReportProgress(
        worker_pb2.ReportProgressRequest(
            progress=[
                worker_pb2.TaskProgress(
                    task=worker_pb2.TaskAttempt(task_id=task_id, attempt=1), progress=50
                )
            ]
        )
    )
    assert response.acks[0].status.code == FAILED_PRECONDITION
    assert (await get(wh, task_id)).progress == 0


async def test_a_task_delivered_too_often_is_failed_instead_of_started(wh: Harness) -> None:
    task_id = await new_task(wh)
    limit = wh.service.worker.max_deliveries
    response = await worker(wh).StartTasks(
        worker_pb2.StartTasksRequest(worker_id="w1", task_ids=[task_id], deliveries=[limit + 1])
    )
    assert response.tasks[0].status.code == FAILED_PRECONDITION
    failed = await get(wh, task_id)
    assert failed.status == tasks_pb2.TASK_STATUS_FAILED
    assert f"{limit + 1} times" in failed.error_message


async def test_a_batch_over_the_limit_is_refused_whole(wh: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker(wh).StartTasks(
            worker_pb2.StartTasksRequest(
                worker_id="w1", task_ids=[str(uuid.uuid4()) for _ in range(501)]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_ids" in (caught.value.details() or "")


async def test_queue_state_is_durable_and_counts_come_from_the_tasks(
    wh: Harness, verification: Verification
) -> None:
    stub = worker_pb2_grpc.QueueStateServiceStub(wh.channel)
    name = f"q-{uuid.uuid4().hex[:8]}"
    state = (await stub.GetQueueState(worker_pb2.GetQueueStateRequest(queue_name=name))).state
    assert not state.paused and state.changed_by == ""
    completed_before = state.completed
    task_id = await new_task(wh)
    await start(wh, task_id)
    await complete(wh, completion(task_id, 1, signed(verification.key, task_id, 1)))
    paused = (
        await stub.SetQueuePaused(
            worker_pb2.SetQueuePausedRequest(queue_name=name, paused=True, changed_by="ops")
        )
    ).state
    assert paused.paused and paused.changed_by == "ops" and paused.changed_at.seconds > 0
    assert paused.completed == completed_before + 1
    again = (await stub.GetQueueState(worker_pb2.GetQueueStateRequest(queue_name=name))).state
    assert again.paused
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetQueueState(worker_pb2.GetQueueStateRequest(queue_name=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_finished_task_is_never_started_again(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    assert await complete(wh, completion(task_id, 1, signed(verification.key, task_id, 1))) == [OK]
    again = await start(wh, task_id)
    assert again[0].status.code == FAILED_PRECONDITION and again[0].attempt == 0
    assert "completed" in again[0].status.message
    assert (await get(wh, task_id)).attempts == 1


async def test_a_completion_before_any_start_is_stale(
    wh: Harness, verification: Verification
) -> None:
    task_id = await new_task(wh)
    codes = await complete(wh, completion(task_id, 1, signed(verification.key, task_id, 1)))
    assert codes == [FAILED_PRECONDITION]
    assert (await get(wh, task_id)).status in (
        tasks_pb2.TASK_STATUS_PENDING,
        tasks_pb2.TASK_STATUS_QUEUED,
    )


async def test_progress_out_of_range_or_backwards(wh: Harness) -> None:
    task_id = await new_task(wh)
    await start(wh, task_id)
    lease = worker_pb2.TaskAttempt(task_id=task_id, attempt=1)
    response = await worker(wh).ReportProgress(
        worker_pb2.ReportProgressRequest(
            progress=[
                worker_pb2.TaskProgress(task=lease, progress=101),
                worker_pb2.TaskProgress(task=lease, progress=60),
            ]
        )
    )
    first, second = response.acks
    assert first.status.code == INVALID_ARGUMENT and "progress" in first.status.message
    assert second.status.code == OK
    backwards = await worker(wh).ReportProgress(
        worker_pb2.ReportProgressRequest(
            progress=[worker_pb2.TaskProgress(task=lease, progress=20)]
        )
    )
    assert backwards.acks[0].status.code == OK
    assert (await get(wh, task_id)).progress == 60
