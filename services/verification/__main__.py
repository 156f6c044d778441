"""Entry point: `verify` runs the CLI; no arguments or `serve` starts the service
(services.verification.main, added with the gRPC server) when it exists."""

from __future__ import annotations

import importlib
import importlib.util
import sys


def _entry(argv: list[str]) -> int:
    if argv and argv[0] == "os-images":
        from .os_images_cli import main as os_images_main

        return os_images_main(argv[1:])
    if argv and argv[0] not in ("serve",):
        from .cli import main as cli_main

        return cli_main(argv)
    if importlib.util.find_spec("services.verification.main") is None:
        print("error: the verification server is not available yet; use 'verify'", file=sys.stderr)
        return 2
    server_main = importlib.import_module("services.verification.main").main
    result = server_main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(_entry(sys.argv[1:]))
