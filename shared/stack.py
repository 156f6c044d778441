"""`make run`: the whole stack in the foreground, one process per service.

On embedded defaults (nothing configured) that is the tasks service on a
SQLite file, the verification service writing reports to a local folder, the
queue service with its in-process queue and workers, and the gateway on PORT.
With REDIS_URL set, a separate worker process joins them (the embedded queue
has its workers inside the queue service). Every child inherits the
environment, so DATABASE_URL, REDIS_URL, S3_* configure the whole stack.

Ctrl-C or SIGTERM stops the children gracefully (SIGTERM, then SIGKILL after
the grace period). If one child dies, the rest are stopped and the exit code
is non-zero: a half-running stack is worse than a clear failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.config import PROJECT_ROOT, Settings, add_config_arguments, settings_from_args


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    args: tuple[str, ...] = ()

    def command(self, config: str | None) -> list[str]:
        cmd = [sys.executable, "-m", self.module, *self.args]
        if config:
            cmd += ["--config", config]
        return cmd


def components(settings: Settings) -> list[Component]:
    """The processes of the stack, in start order (dependencies first)."""
    parts = [
        Component("verification", "services.verification", ("serve",)),
        Component("queue", "services.queue"),
        Component("tasks", "services.tasks"),
        Component("gateway", "services.gateway"),
    ]
    if settings.redis_url:
        parts.insert(2, Component("worker", "services.queue.worker"))
    return parts


def _stop_all(procs: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        remaining = max(0.0, deadline - time.monotonic())
        try:
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(settings: Settings, config: str | None) -> int:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Children find the project and its generated stubs whatever the caller's cwd.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(
            None, [str(PROJECT_ROOT), str(PROJECT_ROOT / "shared" / "gen"), env.get("PYTHONPATH")]
        )
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    mode = "redis" if settings.redis_url else "embedded queue"
    store = "postgresql" if settings.database_url else f"sqlite ({settings.data_dir})"
    reports = settings.s3_endpoint or f"local folder ({settings.data_dir})"
    print(
        f"stack: database={store} queue={mode} reports={reports}\n"
        f"stack: REST http://{settings.host}:{settings.port}"
        f"  tasks gRPC {settings.tasks_listen_addr}",
        file=sys.stderr,
        flush=True,
    )
    for part in components(settings):
        procs[part.name] = subprocess.Popen(part.command(config), cwd=PROJECT_ROOT, env=env)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            code = proc.poll()
            if code is not None:
                print(f"stack: {name} exited with {code}; stopping the rest", file=sys.stderr)
                exit_code = code or 1
                stopping = True
                break
        time.sleep(0.2)
    _stop_all(procs, settings.shutdown_grace_seconds + 2)
    return exit_code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.stack", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    raise SystemExit(run(settings, args.config))


if __name__ == "__main__":
    main()
