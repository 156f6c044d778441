"""Prometheus metrics: every metric of the suite, defined once, and how they are served.

Names follow what people already graph:
- `grpc_server_handled_total` / `grpc_server_handling_seconds` / `grpc_server_started_total`
  in go-grpc-prometheus's shape (labels grpc_type, grpc_service, grpc_method, grpc_code),
  recorded by `MetricsInterceptor` on every gRPC server;
- `verifier_queue_jobs{queue,state}` after bullmq_job_count, `verifier_workers{state}`;
- `verifier_tasks_total{status,verdict}` and `verifier_task_duration_seconds` (create to
  finished) where a task finishes (the tasks service);
- `verifier_verifications_total{check,status}` and `verifier_verification_duration_seconds`
  where a verification runs (the verification service);
- `process_*` and `python_*` from prometheus-client's default collectors.

Each gRPC service serves `/metrics` on its own port (`serve_metrics`); the gateway
serves it on its HTTP port (`render`). With `METRICS_ENABLED=false` nothing is
recorded: `configure(False)` turns the recording functions into no-ops (the
benchmark's "off" side).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.interceptors import HandlerInterceptor, Stream, Unary
from shared.log import get_logger

log = get_logger(__name__)

REGISTRY: CollectorRegistry = prometheus_client.REGISTRY
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# Seconds; from a cache hit to a slow evidence fetch.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server (seconds).",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_JOBS = Gauge(
    "verifier_queue_jobs", "Jobs in the queue by state (like bullmq_job_count).", ["queue", "state"]
)
WORKERS = Gauge("verifier_workers", "Queue workers by state.", ["state"])
TASKS = Counter("verifier_tasks_total", "Tasks that reached a final status.", ["status", "verdict"])
TASK_DURATION = Histogram(
    "verifier_task_duration_seconds",
    "Seconds from a task's creation to its final status.",
    buckets=_TASK_BUCKETS,
)
VERIFICATIONS = Counter(
    "verifier_verifications_total", "Check outcomes of verifications.", ["check", "status"]
)
VERIFICATION_DURATION = Histogram(
    "verifier_verification_duration_seconds",
    "Seconds one verification (evidence, checks, report) took.",
    buckets=_LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "verifier_http_requests_total", "HTTP requests the gateway answered.", ["method", "code"]
)
HTTP_DURATION = Histogram(
    "verifier_http_request_duration_seconds",
    "Seconds the gateway took to answer (streams: until they ended).",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
SCHEDULED = Counter("verifier_scheduler_tasks_total", "Tasks the scheduler created for due apps.")

_enabled = True


def configure(enabled: bool) -> None:
    """Turn recording on or off for this process (METRICS_ENABLED)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


# --- domain events (call where they happen) -------------------------------------------


def task_finished(status: str, verdict: str, seconds: float | None) -> None:
    """A task reached a final status (count it once, on the transition)."""
    if not _enabled:
        return
    TASKS.labels(status=status, verdict=verdict or "none").inc()
    if seconds is not None and seconds >= 0:
        TASK_DURATION.observe(seconds)


def verification_done(checks: list[tuple[str, str]], seconds: float) -> None:
    """One verification ran: each (check, status) it reported, and how long it took."""
    if not _enabled:
        return
    for check, status in checks:
        VERIFICATIONS.labels(check=check, status=status).inc()
    VERIFICATION_DURATION.observe(seconds)


def queue_counts(queue: str, counts: dict[str, int]) -> None:
    """The queue's job counts by state, as last read."""
    if not _enabled:
        return
    for state, count in counts.items():
        QUEUE_JOBS.labels(queue=queue, state=state).set(count)


def worker_counts(counts: dict[str, int]) -> None:
    if not _enabled:
        return
    for state, count in counts.items():
        WORKERS.labels(state=state).set(count)


_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def http_request(method: str, code: int, seconds: float) -> None:
    if not _enabled:
        return
    # The method is client text: a fixed vocabulary keeps the label set bounded.
    method = method if method in _HTTP_METHODS else "OTHER"
    HTTP_REQUESTS.labels(method=method, code=str(code)).inc()
    HTTP_DURATION.labels(method=method).observe(seconds)


def scheduled(count: int) -> None:
    if _enabled and count:
        SCHEDULED.inc(count)


# --- gRPC server interceptor -----------------------------------------------------------


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the numeric value
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default.name


class _CallMetrics:
    """The series of one method and kind ("unary", "server_stream"): `observe`
    counts a call started, then its duration and status code once it ends."""

    def __init__(self, kind: str, service: str, name: str) -> None:
        self._labels = (kind, service, name)
        self._started = GRPC_STARTED.labels(*self._labels)
        self._handling = GRPC_HANDLING.labels(*self._labels)

    @contextlib.contextmanager
    def observe(self, context: grpc.aio.ServicerContext) -> Iterator[None]:
        self._started.inc()
        began = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._handling.observe(time.perf_counter() - began)
            GRPC_HANDLED.labels(*self._labels, _code(context, code)).inc()


class MetricsInterceptor(HandlerInterceptor):
    """go-grpc-prometheus's server metrics; install it outermost, so it sees the
    status the error mapping chose."""

    def wrap_unary(self, inner: Any, details: grpc.HandlerCallDetails) -> Unary:
        series = _CallMetrics("unary", *_split(details.method))

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with series.observe(context):
                return await inner(request, context)

        return unary_unary

    def wrap_stream(self, inner: Any, details: grpc.HandlerCallDetails) -> Stream:
        series = _CallMetrics("server_stream", *_split(details.method))

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            with series.observe(context):
                async for item in inner(request, context):
                    yield item

        return unary_stream


# --- serving ---------------------------------------------------------------------------


def render() -> tuple[bytes, str]:
    """The exposition text of this process's registry, and its content type."""
    return prometheus_client.generate_latest(REGISTRY), CONTENT_TYPE


class MetricsServer:
    """`/metrics` on its own port, in a thread (scrapes never wait on the event loop)."""

    def __init__(self, httpd: WSGIServer, port: int) -> None:
        self._httpd = httpd
        self.port = port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(listen_addr: str) -> MetricsServer | None:
    """Start `/metrics` on HOST:PORT; None when disabled (empty address or metrics off).
    A port already taken is logged, not fatal: the service itself matters more."""
    if not listen_addr or not _enabled:
        return None
    host, _, port = listen_addr.rpartition(":")
    try:
        httpd, _thread = prometheus_client.start_http_server(
            int(port), addr=host, registry=REGISTRY
        )
    except OSError as exc:
        log.warning("metrics.listen_failed", listen=listen_addr, error=str(exc))
        return None
    bound = int(httpd.server_address[1])
    log.info("metrics.listening", listen=listen_addr, port=bound)
    return MetricsServer(httpd, bound)
