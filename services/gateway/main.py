"""`python -m services.gateway`: the REST gateway on HOST:PORT (default 0.0.0.0:3000).

Runs on uvicorn (httptools and uvloop when installed): SIGTERM stops accepting
connections and gives in-flight requests shutdown_grace_seconds to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import sys
from types import FrameType

import uvicorn

from services.gateway.app import GatewayApp, GatewayState, create_app
from services.gateway.settings import GatewaySettings
from shared.entrypoint import new_parser, run_main


def uvicorn_config(settings: GatewaySettings, app: GatewayApp) -> uvicorn.Config:
    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if fast else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        # Our middleware writes one structured line per request; uvicorn's own
        # logging goes through the same structlog renderer.
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        # Longer than the usual load balancer idle timeout (60 s), so the balancer,
        # not the gateway, closes idle connections: no request races a close.
        timeout_keep_alive=75,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the app when SIGTERM/SIGINT arrives: /health turns 503
    at once and open event streams end, so the drain is not held by idle watchers."""

    def __init__(self, config: uvicorn.Config, state: GatewayState) -> None:
        super().__init__(config)
        self.gateway_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # No running loop yet means nothing is open to drain.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon(self.gateway_state.begin_drain)
        super().handle_exit(sig, frame)


def _run(settings: GatewaySettings, _args: argparse.Namespace) -> None:
    # uvicorn runs its own loop (uvloop) and handles SIGTERM/SIGINT itself:
    # GatewayServer.handle_exit starts the drain, then the graceful shutdown.
    app = create_app(settings)
    GatewayServer(uvicorn_config(settings, app), app.state).run()


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m services.gateway", __doc__)
    return run_main("gateway", GatewaySettings, _run, argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
