"""Container health checks for docker compose (Kubernetes uses its native gRPC
and HTTP probes instead). Exit 0 when healthy, 1 otherwise.

    python deploy/healthcheck.py grpc HOST:PORT       grpc.health.v1 says SERVING
    python deploy/healthcheck.py http URL             the URL answers 200
    python deploy/healthcheck.py worker QUEUE_ADDR    a worker on this host is online
"""

from __future__ import annotations

import socket
import sys
import urllib.request

TIMEOUT_SECONDS = 3.0


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS
        )
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        return bool(response.status == 200)


def worker_online(queue_target: str) -> bool:
    """The queue service lists a worker of this host (container) as online."""
    import grpc
    from verifier.queue.v1 import queue_pb2, queue_pb2_grpc

    with grpc.insecure_channel(queue_target) as channel:
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
