"""The one start-up of every process: each service's `main()` (and the queue
worker's) is a call to `run_main`, in the shape of grpc's own Python examples:
build the server, start it, wait for a signal, stop it gracefully.

`run_main` parses `--config`/`--check-config` (and any arguments of the
process's own parser), loads the settings with the one loader (`--check-config`
prints them and exits; an invalid value exits 2 naming the field), configures
logging and metrics, then hands over to the process's `run`. A gRPC service's
`run` is `serving(build_spec)`: its ServiceSpec served until SIGTERM or SIGINT,
then shut down gracefully (health NOT_SERVING, in-flight calls get
shutdown_grace_seconds). Other long-running bodies (the worker) run under
`until_signalled` with the same signals.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from shared import metrics
from shared.config import CommonSettings, add_config_arguments, settings_from_args
from shared.grpc_server import ServiceSpec, serve
from shared.log import configure_logging

S = TypeVar("S", bound=CommonSettings)

# A long-running body that returns once `stop` is set.
Body = Callable[[asyncio.Event], Awaitable[None]]
# What a process does once its settings are loaded; an int is its exit code.
Run = Callable[[S, argparse.Namespace], int | None]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def new_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A process's argument parser with the options every entry point shares."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    return parser


def run_main(
    process: str,
    settings_cls: type[S],
    run: Run[S],
    argv: Sequence[str] | None = None,
    *,
    parser: argparse.ArgumentParser,
) -> int:
    """Parse, load the settings, configure logging and metrics, then `run`."""
    args = parser.parse_args(None if argv is None else list(argv))
    settings = settings_from_args(settings_cls, args)  # --check-config exits here
    configure_logging(process, settings.log_level, settings.log_format)
    metrics.configure(settings.metrics_enabled)
    code = run(settings, args)
    return 0 if code is None else code


async def until_signalled(body: Body) -> None:
    """Run `body(stop)`; SIGTERM or SIGINT sets `stop`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await body(stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def serving(build: Callable[[S], ServiceSpec]) -> Run[S]:
    """The `run` of a gRPC service: serve `build(settings)` until a signal."""

    def run(settings: S, _args: argparse.Namespace) -> None:
        spec = build(settings)

        async def body(stop: asyncio.Event) -> None:
            await serve(spec, stop)

        asyncio.run(until_signalled(body))

    return run
