"""A bounded schemathesis pass against the gateway's own /openapi, with the real
services behind it: no generated request, valid or not, may get a 5xx."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.integration.gateway.stack import Stack

pytestmark = pytest.mark.integration
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_fuzzing_the_openapi_document_finds_no_server_error(
    gateway_stack: Stack, tmp_path: Path
) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{gateway_stack.base_url}/openapi",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--seed",
        "20261123",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        # Health answers 503 by design when a dependency is down; it is not transcoding.
        "--exclude-path-regex",
        "^/health",
        # A watch of a waiting task streams until the task ends; SSE has its own tests.
        "--exclude-operation-id",
        "TaskService_WatchTask",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    assert counts is not None, text[-3000:]
    generated, passed = (int(group) for group in counts.groups())
    assert generated == passed and generated >= 100
