"""A process pool of engines, so the asyncio event loop never blocks on dcap-qvl.

dcap-qvl holds the GIL for ~1 ms per quote: threads would serialise. Each
worker process builds its engine once (initializer). What crosses the process
boundary is requests (a few dataclasses of bytes/str) and Reports, or, for
`verify_and_store`, the WrittenReport of a report the worker process signed
and stored itself (report_writer.py): the service's main process is a single
one, and the signing, the canonical JSON and the PUT are spread over the pool.

Requests are sent in batches: a ProcessPoolExecutor round trip costs the
parent ~0.5 ms of CPU, about half a verification, and on a 2-core machine that
CPU is taken from the workers. At most two batches per worker are in flight;
whatever queues up meanwhile goes in the next batch. An idle pool therefore
sends each request alone (no added latency) and a busy one amortises the
round trip over up to `max_batch` requests. `verify_many` queues a whole batch
(VerifyTasks) before dispatching, so it is split evenly over the free slots
rather than sent one by one.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import Unavailable
from shared.log import get_logger

from .collateral import CollateralStore
from .engine import VerificationEngine
from .model import Report, VerificationRequest
from .report import key_id
from .report_writer import ReportWriter, WriteTarget, WrittenReport
from .settings import VerificationSettings

log = get_logger(__name__)

_ENGINE: VerificationEngine | None = None
_WRITER: ReportWriter | None = None


class EngineProcessDied(Unavailable):
    """A pool process died under a batch; the pool was restarted (retry)."""


def _init_worker(settings: VerificationSettings, signing_key: bytes) -> None:
    global _ENGINE, _WRITER
    _ENGINE = VerificationEngine(settings)
    if signing_key:
        # The store client is made at the first write: a store that is down
        # must fail writes, not this initializer (that would break the pool).
        _WRITER = ReportWriter(
            settings.report_store, Ed25519PrivateKey.from_private_bytes(signing_key)
        )


_Item = tuple[VerificationRequest, WriteTarget | None]


def _verify_batch(items: list[_Item]) -> list[Report | WrittenReport | Exception]:
    """Verify each item; then sign and store the batch's reports at once."""
    if _ENGINE is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker engine not initialised")
    results: list[Report | WrittenReport | Exception] = []
    to_write: list[tuple[int, Report, WriteTarget]] = []
    for request, target in items:
        try:
            report = _ENGINE.verify(request)
        except Exception as exc:
            results.append(exc)
            continue
        if target is not None:
            to_write.append((len(results), report, target))
        results.append(report)
    if to_write:
        stored: list[WrittenReport | Exception] = (
            _WRITER.write_many([(report, target) for _, report, target in to_write])
            if _WRITER is not None
            else [RuntimeError("the pool was started without a signing key")] * len(to_write)
        )
        for (index, _, _), result in zip(to_write, stored, strict=True):
            results[index] = result
    return results


def _ping(_: int) -> int:
    return os.getpid()


_Waiting = tuple[_Item, "asyncio.Future[Any]"]


class VerificationPool:
    """`await pool.verify(request)` runs the engine in a worker process.

    When `collateral_store` has a PCCS, missing collateral is fetched here, in
    the event loop (network, async), and passed to the worker inline.
    With `signing_key` (the one the service publishes), `verify_and_store`
    has the worker sign and store each report (in settings.report_store).
    """

    def __init__(
        self,
        settings: VerificationSettings,
        max_workers: int | None = None,
        collateral_store: CollateralStore | None = None,
        start_method: str = "spawn",
        max_batch: int = 16,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        # spawn, not fork: forking a process that runs grpc.aio threads is unsafe.
        self.settings = settings
        self.collateral_store = collateral_store
        self.max_workers = max_workers or os.cpu_count() or 1
        self.max_batch = max_batch
        self._max_in_flight = 2 * self.max_workers
        self._in_flight = 0
        self._waiting: deque[_Waiting] = deque()
        self._start_method = start_method
        self._signing_key = signing_key.private_bytes_raw() if signing_key is not None else b""
        # Whose signature the worker processes put on reports ("" without a key).
        self.signing_key_id = key_id(signing_key) if signing_key is not None else ""
        self._executor = self._new_executor()
        self._generation = 0  # bumped each time a broken executor is replaced

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=multiprocessing.get_context(self._start_method),
            initializer=_init_worker,
            initargs=(self.settings, self._signing_key),
        )

    def _replace_broken(self, generation: int) -> None:
        """A worker process died (killed, out of memory): the executor is broken
        for good, so start a new one, once per breakage."""
        if generation != self._generation:
            return
        log.error("pool.worker_died", processes=self.max_workers)
        broken, self._executor = self._executor, self._new_executor()
        self._generation += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Start every worker now rather than on the first requests."""
        list(self._executor.map(_ping, range(self.max_workers * 2)))

    async def verify(self, request: VerificationRequest) -> Report:
        (future,) = await self.verify_many([request])
        return await future

    async def verify_many(
        self, requests: list[VerificationRequest]
    ) -> list[asyncio.Future[Report]]:
        """Queue every request at once; one future per request, in order.
        A missing collateral fails only its own request's future."""
        return await self._queue([(r, None) for r in requests])

    async def verify_and_store(
        self, jobs: list[tuple[VerificationRequest, WriteTarget]]
    ) -> list[asyncio.Future[WrittenReport]]:
        """As verify_many, and each report is signed and stored once by the
        worker that made it: a future per job of its WrittenReport, or of
        ReportStoreUnavailable when the store failed (that job only)."""
        if not self._signing_key:
            raise RuntimeError("the pool was started without a signing key")
        return await self._queue(list(jobs))

    async def _queue(self, items: list[_Item]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(
            *(self._with_collateral(r) for r, _ in items), return_exceptions=True
        )
        futures: list[asyncio.Future[Any]] = []
        for (_, target), request in zip(items, prepared, strict=True):
            future: asyncio.Future[Any] = loop.create_future()
            futures.append(future)
            if isinstance(request, BaseException):
                future.set_exception(request)
            else:
                self._waiting.append(((request, target), future))
        self._dispatch(loop)
        return futures

    async def _with_collateral(self, request: VerificationRequest) -> VerificationRequest:
        store = self.collateral_store
        if not request.evidence.collateral and store is not None and store.pccs is not None:
            bundle = await store.resolve(request.evidence.quote, request.evaluated_at)
            request = replace(
                request, evidence=replace(request.evidence, collateral=bundle.json_text)
            )
        return request

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            # Spread what waits over the free slots, at most max_batch each.
            free = self._max_in_flight - self._in_flight
            size = min(self.max_batch, -(-len(self._waiting) // free))
            batch = [self._waiting.popleft() for _ in range(size)]
            batch = [(r, f) for r, f in batch if not f.cancelled()]
            if not batch:
                continue
            generation = self._generation
            try:
                submitted = self._executor.submit(_verify_batch, [r for r, _ in batch])
            except BrokenProcessPool:
                self._replace_broken(generation)
                generation = self._generation
                submitted = self._executor.submit(_verify_batch, [r for r, _ in batch])
            self._in_flight += 1
            # Runs in the executor's thread: hand the results to the event loop.
            submitted.add_done_callback(
                functools.partial(self._finish_threadsafe, loop, batch, generation)
            )

    def _finish_threadsafe(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        generation: int,
        done: Future[list[Report | WrittenReport | Exception]],
    ) -> None:
        loop.call_soon_threadsafe(self._finish, loop, batch, generation, done)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        generation: int,
        done: Future[list[Report | WrittenReport | Exception]],
    ) -> None:
        self._in_flight -= 1
        error: BaseException | None = (
            done.exception() if not done.cancelled() else asyncio.CancelledError()
        )
        if isinstance(error, BrokenProcessPool):
            # The batch's requests are not the cause for sure: a transient fault.
            self._replace_broken(generation)
            error = EngineProcessDied("a verification process died; retry the request")
        results: list[Report | WrittenReport | BaseException] = (
            [error] * len(batch) if error is not None else list(done.result())
        )
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._dispatch(loop)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
