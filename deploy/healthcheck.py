"""Container health checks (docker compose, and the Kubernetes exec probes of
services whose public port speaks TLS). Exit 0 when healthy, 1 otherwise.

    python deploy/healthcheck.py grpc HOST:PORT       grpc.health.v1 says SERVING
    python deploy/healthcheck.py http URL             the URL answers 200
    python deploy/healthcheck.py worker QUEUE_ADDR    a worker on this host is online

With TLS_PUBLIC=true the grpc check speaks TLS, trusting TLS_DIR/ca.crt. The
worker check asks the queue's internal (mutual-TLS) port with the queue's
certificate when authentication is on, so it needs no API key.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 3.0


def _tls_dir() -> str:
    return os.environ.get("TLS_DIR") or os.path.join(os.environ.get("DATA_DIR", "data"), "certs")


def _on(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _channel(target: str, *, client_cert: bool) -> Any:
    """TLS trusting our CA (with the queue's certificate for mutual TLS), or plaintext."""
    import grpc

    if client_cert and not _on("AUTH_ENABLED", "true"):
        return grpc.insecure_channel(target)
    if not client_cert and not _on("TLS_PUBLIC", "false"):
        return grpc.insecure_channel(target)
    folder = _tls_dir()
    with open(os.path.join(folder, "ca.crt"), "rb") as ca:
        root = ca.read()
    if not client_cert:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
    with (
        open(os.path.join(folder, "queue.key"), "rb") as k,
        open(os.path.join(folder, "queue.crt"), "rb") as c,
    ):
        creds = grpc.ssl_channel_credentials(root, k.read(), c.read())
    return grpc.secure_channel(target, creds)


def grpc_serving(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(target, client_cert=False) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS
        )
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        return bool(response.status == 200)


def worker_online(queue_target: str) -> bool:
    """The queue service lists a worker of this host (container) as online."""
    from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

    with _channel(queue_target, client_cert=True) as channel:
        workers = queue_pb2_grpc.QueueServiceStub(channel).ListWorkers(
            queue_pb2.ListWorkersRequest(), timeout=TIMEOUT_SECONDS
        )
    host = socket.gethostname()
    return any(w.host == host and w.state == queue_pb2.WORKER_STATE_ONLINE for w in workers.workers)


CHECKS = {"grpc": grpc_serving, "http": http_ok, "worker": worker_online}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        healthy = CHECKS[argv[0]](argv[1])
    except Exception as exc:  # any failure to answer is "unhealthy"
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not healthy:
        print("unhealthy", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
