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

`--check-config` (`make check-config`) loads every service's settings from the
same environment and file, prints them (secrets masked) and refuses a file key
that no service declares. This module is not a service: it imports each
service's settings module and nothing else of them (tests/unit/test_import_rules.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.gateway.settings import GatewaySettings
from services.queue.settings import QueueSettings
from services.tasks.settings import TasksSettings
from services.verification.settings import VerificationSettings
from shared.config import (
    PROJECT_ROOT,
    CommonSettings,
    ConfigError,
    add_config_arguments,
    check_known_keys,
    config_file_path,
    load_settings,
    setting_names,
)
from shared.tls import ensure_dev_certs

# Each service's settings class, by the name of its process (workers are the queue's).
SETTINGS: dict[str, type[CommonSettings]] = {
    "tasks": TasksSettings,
    "queue": QueueSettings,
    "verification": VerificationSettings,
    "gateway": GatewaySettings,
}


@dataclass(frozen=True)
class StackSettings:
    """Every service's settings, loaded from one environment and file."""

    tasks: TasksSettings
    queue: QueueSettings
    verification: VerificationSettings
    gateway: GatewaySettings

    def masked(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).masked() for name in SETTINGS}


def load_stack_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> StackSettings:
    """Load and check every service's settings; a ConfigError names the service."""
    loaded: dict[str, Any] = {}
    for name, cls in SETTINGS.items():
        try:
            loaded[name] = load_settings(cls, env, config_file)
        except ConfigError as exc:
            raise ConfigError(f"{name}.{exc.field}", exc.message) from None
    known = set().union(*(setting_names(cls) for cls in SETTINGS.values()))
    check_known_keys(config_file_path(env, config_file), known)
    return StackSettings(**loaded)


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    args: tuple[str, ...] = ()
    # Where its grpc.health.v1 answers; the gateway starts once these all serve,
    # so the first REST request does not meet a service still starting.
    health_addr: str = ""

    def command(self, config: str | None) -> list[str]:
        cmd = [sys.executable, "-m", self.module, *self.args]
        if config:
            cmd += ["--config", config]
        return cmd


def components(stack: StackSettings) -> list[Component]:
    """The processes of the stack, in start order (dependencies first)."""
    settings = stack.gateway  # the peers' addresses are the same in every service's settings
    parts = [
        Component("verification", "services.verification", ("serve",), settings.verification_addr),
        Component("queue", "services.queue", (), settings.queue_addr),
        Component("tasks", "services.tasks", (), settings.tasks_addr),
        Component("gateway", "services.gateway"),
    ]
    if stack.queue.redis_url:
        parts.insert(2, Component("worker", "services.queue.worker"))
    return parts


def _serving(addr: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _wait_serving(
    parts: list[Component],
    procs: dict[str, subprocess.Popen[bytes]],
    within: float,
    stopping: Callable[[], bool],
) -> bool:
    """Wait until every started gRPC service serves. False if one exits or a stop
    is requested meanwhile; True (with a warning) when time runs out."""
    deadline = time.monotonic() + within
    pending = [p for p in parts if p.health_addr and p.name in procs]
    while pending:
        if stopping() or any(procs[p.name].poll() is not None for p in pending):
            return False
        pending = [p for p in pending if not _serving(p.health_addr)]
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            print(f"stack: still waiting for {names}; starting the rest", file=sys.stderr)
            return True
        if pending:
            time.sleep(0.2)
    return True


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


def prepare_auth(settings: CommonSettings, config: str | None, env: dict[str, str]) -> None:
    """First start with authentication on: the dev certificates when missing, and
    the admin key (written to ADMIN_KEY_FILE, mode 0600), so the stack starts
    with two commands and the operator knows where its key is."""
    if not settings.auth_enabled:
        print("stack: AUTH_ENABLED=false: every caller may do everything", file=sys.stderr)
        return
    made = ensure_dev_certs(settings.effective_tls_dir)
    if made:
        print(
            f"stack: made dev certificates for {', '.join(made)} in {settings.effective_tls_dir}",
            file=sys.stderr,
        )
    cmd = [sys.executable, "-m", "services.tasks", "api-key", "bootstrap"]
    if config:
        cmd += ["--config", config]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"stack: cannot create the admin key:\n{done.stderr[-2000:]}")
    print(f"stack: {done.stdout.strip()}", file=sys.stderr, flush=True)


def run(stack: StackSettings, config: str | None) -> int:
    settings = stack.gateway
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Children find the project and its generated stubs whatever the caller's cwd.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(
            None, [str(PROJECT_ROOT), str(PROJECT_ROOT / "shared" / "gen"), env.get("PYTHONPATH")]
        )
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    prepare_auth(settings, config, env)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    mode = "redis" if stack.queue.redis_url else "embedded queue"
    store = "postgresql" if stack.tasks.database_url else f"sqlite ({settings.data_dir})"
    reports = stack.verification.s3_endpoint or f"local folder ({settings.data_dir})"
    print(
        f"stack: database={store} queue={mode} reports={reports}\n"
        f"stack: REST http://{settings.host}:{settings.port}"
        f"  tasks gRPC {stack.tasks.tasks_listen_addr}",
        file=sys.stderr,
        flush=True,
    )
    parts = components(stack)
    for part in parts:
        if part.name == "gateway" and not _wait_serving(
            parts, procs, within=60, stopping=lambda: stopping
        ):
            break  # a service died while starting: the loop below reports it
        procs[part.name] = subprocess.Popen(part.command(config), cwd=PROJECT_ROOT, env=env)
    else:
        print("stack: ready", file=sys.stderr, flush=True)
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
    parser = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        stack = load_stack_settings(config_file=args.config)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.check_config:
        print(json.dumps(stack.masked(), indent=2, sort_keys=True))
        raise SystemExit(0)
    raise SystemExit(run(stack, args.config))


if __name__ == "__main__":
    main()
