"""The gateway as a process in front of a pipeline stack (tests/fault/stack.py)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.fault.stack import Process


def start_gateway(env: dict[str, str], port: int, log_path: Path) -> Process:
    """`python -m services.gateway` on 127.0.0.1:port; returns once /health answers 200."""
    gateway = Process(
        "gateway",
        ["-m", "services.gateway"],
        {**env, "HOST": "127.0.0.1", "PORT": str(port)},
        log_path,
    ).start()
    wait_http(f"http://127.0.0.1:{port}/health", gateway)
    return gateway


def wait_http(url: str, process: Process, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered:\n{process.tail()}")
