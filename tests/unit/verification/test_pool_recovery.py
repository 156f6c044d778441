"""A pool process killed under load costs a retry, never the pool."""

from __future__ import annotations

import asyncio
import os
import signal

from services.verification.model import Report
from services.verification.pool import EngineProcessDied, VerificationPool
from services.verification.settings import VerificationSettings

from .support import quote_report_request


async def test_a_killed_worker_process_fails_its_batch_as_transient_and_the_pool_recovers() -> None:
    pool = VerificationPool(VerificationSettings(), max_workers=1)
    try:
        pool.warm_up()
        (pid,) = [p.pid for p in pool._executor._processes.values()]
        # Enough work (~0.2 s) that the kill lands while it runs.
        futures = await pool.verify_many([quote_report_request() for _ in range(200)])
        os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        died = [o for o in outcomes if isinstance(o, EngineProcessDied)]
        finished = [o for o in outcomes if isinstance(o, Report)]
        # What had not finished when the process died is a retryable fault;
        # nothing is a wrong verdict.
        assert died
        assert len(died) + len(finished) == len(outcomes)
        assert all(report.passed for report in finished)
        # The next requests run on a new process.
        again = await asyncio.gather(*(pool.verify(quote_report_request()) for _ in range(3)))
        assert all(report.passed for report in again)
        assert pid not in [p.pid for p in pool._executor._processes.values()]
    finally:
        pool.shutdown()
