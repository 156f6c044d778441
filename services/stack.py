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

`--check-config` (`make check-config`) asks every service for its effective
settings (`python -m services.<name> --check-config`, from the same
environment and file), prints them (secrets masked) and refuses a file key
that no service declares. `make run` asks the same first, so a bad value stops
the stack before anything starts. This module is not a service and imports
none: it knows the services by their module names only
(tests/unit/test_import_rules.py).
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

import grpc

from shared.config import (
    INVALID_CONFIGURATION,
    PROJECT_ROOT,
    CommonSettings,
    ConfigError,
    add_config_arguments,
    check_known_keys,
    config_file_path,
    with_values,
)
from shared.grpc_client import health_serving
from shared.security import public_channel_credentials
from shared.tls import ensure_dev_certs

# A service's settings as its --check-config prints them (secrets masked).
Printed = dict[str, Any]


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    args: tuple[str, ...] = ()
    # The setting holding where its grpc.health.v1 answers; the gateway starts
    # once these all serve, so the first REST request does not meet a service
    # still starting.
    health_setting: str = ""

    def command(self, config: str | None, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", self.module, *self.args, *extra]
        if config:
            cmd += ["--config", config]
        return cmd


# The services, in start order (dependencies first); the worker reads the
# queue's settings and joins with REDIS_URL.
SERVICES: dict[str, Component] = {
    "verification": Component(
        "verification", "services.verification", ("serve",), "verification_addr"
    ),
    "queue": Component("queue", "services.queue", (), "queue_addr"),
    "tasks": Component("tasks", "services.tasks", (), "tasks_addr"),
    "gateway": Component("gateway", "services.gateway"),
}
WORKER = Component("worker", "services.queue.worker")
# The order in which a refused configuration is reported.
CHECK_ORDER = ("tasks", "queue", "verification", "gateway")


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The children's environment: ours, with the project and its generated
    stubs on the path whatever the caller's cwd."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(
            None, [str(PROJECT_ROOT), str(PROJECT_ROOT / "shared" / "gen"), env.get("PYTHONPATH")]
        )
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _refusal(name: str, code: int, stderr: str) -> ConfigError:
    """The ConfigError a service's --check-config exited with, named service.field."""
    line = next((x for x in stderr.splitlines() if x.startswith(INVALID_CONFIGURATION)), "")
    if code == 2 and line:
        field, _, message = line[len(INVALID_CONFIGURATION) :].partition(": ")
        return ConfigError(f"{name}.{field}", message)
    return ConfigError(name, f"--check-config exited with {code}: {stderr.strip()[-2000:]}")


def check_settings(config: str | None, env: Mapping[str, str] | None = None) -> dict[str, Printed]:
    """Every service's effective settings, each printed by the service itself
    (run side by side); a ConfigError names service.field when one refuses."""
    env = child_env(env)
    procs = {
        name: subprocess.Popen(
            part.command(config, "--check-config"),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, part in SERVICES.items()
    }
    replies = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    for name in CHECK_ORDER:
        if procs[name].returncode != 0:
            raise _refusal(name, procs[name].returncode, replies[name][1])
    printed = {name: json.loads(replies[name][0]) for name in CHECK_ORDER}
    check_known_keys(config_file_path(env, config), set().union(*printed.values()))
    return printed


def components(printed: Mapping[str, Printed]) -> list[Component]:
    """The processes of the stack, in start order (dependencies first)."""
    parts = list(SERVICES.values())
    if printed["queue"]["redis_url"]:
        parts.insert(2, WORKER)
    return parts


def _wait_serving(
    targets: Mapping[str, str],
    procs: dict[str, subprocess.Popen[bytes]],
    within: float,
    stopping: Callable[[], bool],
    credentials: grpc.ChannelCredentials | None,
) -> bool:
    """Wait until every started gRPC service (name: its address) serves. False if
    one exits or a stop is requested meanwhile; True (with a warning) when time
    runs out."""
    deadline = time.monotonic() + within
    pending = [name for name in targets if name in procs]
    while pending:
        if stopping() or any(procs[name].poll() is not None for name in pending):
            return False
        pending = [name for name in pending if not health_serving(targets[name], credentials)]
        if pending and time.monotonic() > deadline:
            names = ", ".join(pending)
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
    cmd = Component("api-key", SERVICES["tasks"].module, ("api-key", "bootstrap")).command(config)
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"stack: cannot create the admin key:\n{done.stderr[-2000:]}")
    print(f"stack: {done.stdout.strip()}", file=sys.stderr, flush=True)


def _describe(printed: Mapping[str, Printed], data_dir: str) -> str:
    gateway, tasks = printed["gateway"], printed["tasks"]
    mode = "redis" if printed["queue"]["redis_url"] else "embedded queue"
    store = "postgresql" if tasks["database_url"] else f"sqlite ({data_dir})"
    reports = printed["verification"]["s3_endpoint"] or f"local folder ({data_dir})"
    return (
        f"stack: database={store} queue={mode} reports={reports}\n"
        f"stack: REST http://{gateway['host']}:{gateway['port']}"
        f"  tasks gRPC {tasks['tasks_listen_addr']}"
    )


def run(printed: Mapping[str, Printed], config: str | None) -> int:
    # The topology (peers' addresses, data folder, authentication) is the same
    # in every service's settings.
    settings = with_values(CommonSettings, printed["gateway"])
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    env = child_env()
    prepare_auth(settings, config, env)
    # The public ports speak TLS under TLS_PUBLIC: so does the wait for them.
    credentials = public_channel_credentials(settings, "gateway")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(_describe(printed, settings.data_dir), file=sys.stderr, flush=True)
    parts = components(printed)
    targets = {p.name: getattr(settings, p.health_setting) for p in parts if p.health_setting}
    for part in parts:
        if part.name == "gateway" and not _wait_serving(
            targets, procs, 60, lambda: stopping, credentials
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
        printed = check_settings(args.config)
    except ConfigError as exc:
        print(f"{INVALID_CONFIGURATION}{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.check_config:
        print(json.dumps(printed, indent=2, sort_keys=True))
        raise SystemExit(0)
    raise SystemExit(run(printed, args.config))


if __name__ == "__main__":
    main()
