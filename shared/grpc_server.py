"""One grpc.aio server bootstrap for every service.

What each service gets from `serve()` / `start_server()`:
- the standard health service (grpc.health.v1), driven by real dependency
  probes run every `health_probe_interval_seconds`;
- `verifier.ops.v1.DiagnosticsService` answering each dependency's state,
  latency and version (the gateway's /health/detailed reads it);
- server reflection, so `grpcurl list` and `describe` work;
- the request-context interceptor: takes `x-request-id` from the metadata (or
  makes one), binds it into every log line, returns it, and maps domain errors
  to gRPC status codes (the one place this happens);
- graceful shutdown (`serve`, which shared.entrypoint runs until SIGTERM/SIGINT):
  health turns NOT_SERVING, in-flight calls get `shutdown_grace_seconds` to finish.

Servicer methods stay thin: parse, call the domain, map the result. Streaming
handlers must be async generators.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from verifier.ops.v1 import diagnostics_pb2, diagnostics_pb2_grpc

import shared
from shared import errors, metrics, reflection
from shared.auth import WWW_AUTHENTICATE, Authorizer, peer_common_name
from shared.context import REQUEST_ID_METADATA_KEY, bind_request_id, sanitize_request_id
from shared.interceptors import HandlerInterceptor, Stream, Unary
from shared.log import get_logger
from shared.principal import bind_identity
from shared.retry import Backoff, keep_running
from shared.tls import server_credentials

if TYPE_CHECKING:
    from shared.security import Security

log = get_logger(__name__)

# The one mapping of domain errors to gRPC status codes (most specific first by MRO).
_STATUS_BY_ERROR: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
# Trailers that tell an HTTP client what to do next (the gateway copies them).
WWW_AUTHENTICATE_METADATA_KEY = "www-authenticate"
RETRY_AFTER_METADATA_KEY = "retry-after"

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Our clients ping every 30 s (grpc_client.CHANNEL_OPTIONS); grpc's server
    # default allows one ping in 5 min and answers more with GOAWAY
    # too_many_pings, dropping the connection. Accept them.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def status_code_for(exc: errors.DomainError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def _status_details(exc: errors.DomainError, code: grpc.StatusCode) -> bytes:
    """google.rpc.Status with a BadRequest field violation, for rich-error clients."""
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if isinstance(exc, errors.InvalidArgument) and exc.field:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=exc.field, description=exc.message
                )
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    return status.SerializeToString()


async def _abort_for(
    exc: BaseException,
    context: grpc.aio.ServicerContext,
    method: str,
    started: float,
    request_id: str,
) -> None:
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    if isinstance(exc, errors.DomainError):
        code = status_code_for(exc)
        log.info("rpc.error", method=method, code=code.name, error=str(exc), ms=elapsed_ms)
        trailers: list[tuple[str, str | bytes]] = [
            (REQUEST_ID_METADATA_KEY, request_id),
            ("grpc-status-details-bin", _status_details(exc, code)),
        ]
        if isinstance(exc, errors.Unauthenticated):
            trailers.append((WWW_AUTHENTICATE_METADATA_KEY, WWW_AUTHENTICATE))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            trailers.append((RETRY_AFTER_METADATA_KEY, str(retry_after)))
        await context.abort(
            code,
            str(exc),  # str() keeps the "field: " prefix subclasses may strip from .message
            trailing_metadata=tuple(trailers),
        )
    log.exception("rpc.internal_error", method=method, ms=elapsed_ms, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error; see the service log for request {request_id}",
        trailing_metadata=((REQUEST_ID_METADATA_KEY, request_id),),
    )


@dataclass(frozen=True)
class _CallContext:
    """What one call carries in: its method, metadata and request id."""

    method: str
    metadata: dict[str, Any]
    request_id: str
    authorizer: Authorizer | None

    @classmethod
    def of(cls, details: grpc.HandlerCallDetails, authorizer: Authorizer | None) -> _CallContext:
        metadata = dict(details.invocation_metadata or ())
        request_id = sanitize_request_id(metadata.get(REQUEST_ID_METADATA_KEY))
        return cls(details.method, metadata, request_id, authorizer)

    def enter(self, context: grpc.aio.ServicerContext) -> float:
        bind_request_id(self.request_id)
        context.set_trailing_metadata(((REQUEST_ID_METADATA_KEY, self.request_id),))
        return time.perf_counter()

    async def check(self, context: grpc.aio.ServicerContext, request: Any) -> None:
        if self.authorizer is None:
            return
        identity = await self.authorizer.authorize(
            self.method,
            self.metadata,
            lambda: peer_common_name(context.auth_context()),
            request,
        )
        if identity is not None:
            bind_identity(identity)

    def ok(self, started: float) -> None:
        if not self.method.startswith(("/grpc.health", "/grpc.reflection")):
            log.debug(
                "rpc.ok", method=self.method, ms=round((time.perf_counter() - started) * 1000, 2)
            )

    async def fail(
        self, exc: BaseException, context: grpc.aio.ServicerContext, started: float
    ) -> None:
        await _abort_for(exc, context, self.method, started, self.request_id)


class RequestContextInterceptor(HandlerInterceptor):
    """Binds the request id, checks the caller (shared.auth's policy, when an
    authorizer is given) and binds its identity, and maps domain errors, around
    every handler."""

    def __init__(self, authorizer: Authorizer | None = None) -> None:
        self.authorizer = authorizer

    def wrap_unary(self, inner: Any, details: grpc.HandlerCallDetails) -> Unary:
        call = _CallContext.of(details, self.authorizer)

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = call.enter(context)
            try:
                await call.check(context, request)
                response = await inner(request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await call.fail(exc, context, started)
                raise  # unreachable: abort raises
            call.ok(started)
            return response

        return unary_unary

    def wrap_stream(self, inner: Any, details: grpc.HandlerCallDetails) -> Stream:
        call = _CallContext.of(details, self.authorizer)

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started = call.enter(context)
            try:
                await call.check(context, request)
                stream = inner(request, context)
                if hasattr(stream, "__aiter__"):
                    async for item in stream:
                        yield item
                else:
                    # A handler that writes with context.write() (the health
                    # service's Watch) is a coroutine, not an async iterator.
                    await stream
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await call.fail(exc, context, started)

        return unary_stream


# --- dependency probes -------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome."""

    name: str
    up: bool
    latency_ms: float
    version: str = ""
    message: str = ""
    required: bool = True


@dataclass(frozen=True)
class DependencyProbe:
    """A named check of one dependency; `check` returns the server's version or raises."""

    name: str
    check: Callable[[], Awaitable[str]]
    required: bool = True
    timeout_seconds: float = 3.0

    async def run(self) -> ProbeResult:
        started = time.perf_counter()
        try:
            version = await asyncio.wait_for(self.check(), self.timeout_seconds)
        except Exception as exc:  # a probe failure is a state, never a crash
            message = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
            return ProbeResult(
                self.name, False, _ms(started), message=message, required=self.required
            )
        return ProbeResult(self.name, True, _ms(started), version=version, required=self.required)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


async def run_probes(probes: Sequence[DependencyProbe]) -> list[ProbeResult]:
    return list(await asyncio.gather(*(probe.run() for probe in probes)))


class DiagnosticsServicer(diagnostics_pb2_grpc.DiagnosticsServiceServicer):
    def __init__(self, service: str, probes: Sequence[DependencyProbe]) -> None:
        self._service = service
        self._probes = probes

    async def CheckDependencies(
        self, request: diagnostics_pb2.CheckDependenciesRequest, context: grpc.aio.ServicerContext
    ) -> diagnostics_pb2.CheckDependenciesResponse:
        results = await run_probes(self._probes)
        return diagnostics_pb2.CheckDependenciesResponse(
            service=self._service,
            version=shared.__version__,
            dependencies=[
                diagnostics_pb2.Dependency(
                    name=r.name,
                    state=diagnostics_pb2.DEPENDENCY_STATE_UP
                    if r.up
                    else diagnostics_pb2.DEPENDENCY_STATE_DOWN,
                    latency_ms=r.latency_ms,
                    version=r.version,
                    message=r.message,
                    required=r.required,
                )
                for r in results
            ],
        )


# --- the server ----------------------------------------------------------------


@dataclass
class ServiceSpec:
    """What a service hands the bootstrap."""

    # Short name for logs and diagnostics: "tasks", "queue", "verification".
    name: str
    # Fully qualified gRPC service names it registers (for health and reflection).
    service_names: Sequence[str]
    # Adds the servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    listen_addr: str
    probes: Sequence[DependencyProbe] = ()
    # Background coroutines started with the server and cancelled at shutdown
    # (reconcilers, listeners).
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    # Awaited after the server stopped (close pools, engines).
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    health_probe_interval_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    # HOST:PORT of this service's Prometheus /metrics; empty: none.
    metrics_listen_addr: str = ""
    # Authentication (shared.security.service_security); None: every call allowed.
    security: Security | None = None


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful with ":0")."""

    spec: ServiceSpec
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: metrics.MetricsServer | None = None

    @property
    def metrics_port(self) -> int:
        """The bound /metrics port, 0 when metrics are not served."""
        return self.metrics.port if self.metrics is not None else 0

    # The bound mutual-TLS port of the internal RPCs (0 without security).
    internal_port: int = 0

    async def stop(self, grace: float | None = None) -> None:
        grace = self.spec.shutdown_grace_seconds if grace is None else grace
        log.info("server.stopping", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        # Bounded: a background job that is slow to honour its cancel (a call
        # on a store that does not answer) must not keep the process from
        # stopping; what it left undone is recovered by leases and reclaims.
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=STOP_STEP_SECONDS)
            if pending:
                log.warning("server.jobs_still_stopping", count=len(pending))
        hooks = list(self.spec.on_stop)
        if self.spec.security is not None:
            hooks += self.spec.security.on_stop
        for hook in hooks:
            step = asyncio.ensure_future(hook())
            done, _ = await asyncio.wait({step}, timeout=STOP_STEP_SECONDS)
            if not done:
                step.cancel()
                log.warning("server.on_stop_timed_out", hook=getattr(hook, "__qualname__", ""))
            elif not step.cancelled() and step.exception() is not None:
                log.error("server.on_stop_failed", error=repr(step.exception()))
        if self.metrics is not None:
            self.metrics.close()
        log.info("server.stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


# How long stop() gives the background jobs, then each on-stop hook.
STOP_STEP_SECONDS = 5.0


async def _health_loop(spec: ServiceSpec, servicer: health.aio.HealthServicer) -> None:
    names = ["", *spec.service_names]
    last: int | None = None
    while True:
        results = await run_probes(spec.probes)
        serving = all(r.up for r in results if r.required)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != last:
            down = [r.name for r in results if not r.up]
            log.info("health.changed", serving=serving, down=down)
            last = status
        for name in names:
            await servicer.set(name, status)
        await asyncio.sleep(spec.health_probe_interval_seconds)


async def start_server(spec: ServiceSpec) -> RunningServer:
    """Build, register and start the server; returns once it listens."""
    security = spec.security
    authorizer = security.authorizer if security is not None else None
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestContextInterceptor(authorizer)]
    if metrics.enabled():
        # Outermost: it sees the status code the error mapping chose.
        interceptors.insert(0, metrics.MetricsInterceptor())
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    spec.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    diagnostics_pb2_grpc.add_DiagnosticsServiceServicer_to_server(
        DiagnosticsServicer(spec.name, spec.probes), server
    )
    reflection.enable(
        server,
        [
            *spec.service_names,
            health.SERVICE_NAME,
            diagnostics_pb2.DESCRIPTOR.services_by_name["DiagnosticsService"].full_name,
        ],
    )
    internal_port = 0
    if security is None:
        port = server.add_insecure_port(spec.listen_addr)
    else:
        if security.public_tls:
            public_creds: Any = server_credentials(security.certs, require_client_auth=False)
            port = server.add_secure_port(spec.listen_addr, public_creds)
        else:
            _refuse_plaintext_beyond_loopback(spec.listen_addr, security.environment)
            port = server.add_insecure_port(spec.listen_addr)
        internal_creds: Any = server_credentials(security.certs, require_client_auth=True)
        internal_port = server.add_secure_port(security.internal_listen_addr, internal_creds)
        if internal_port == 0:
            raise OSError(f"cannot listen on {security.internal_listen_addr}")
    if port == 0:
        raise OSError(f"cannot listen on {spec.listen_addr}")
    # grpc's servicer starts with "" SERVING; say NOT_SERVING for every name
    # until the first probe round decides, so nobody sees SERVING early.
    for name in ["", *spec.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    running = RunningServer(spec, server, port, health_servicer, internal_port=internal_port)
    running.metrics = metrics.serve_metrics(spec.metrics_listen_addr)
    running.tasks.append(asyncio.create_task(_health_loop(spec, health_servicer)))
    for job in spec.background:
        running.tasks.append(asyncio.create_task(_supervise(job)))
    log.info(
        "server.started",
        listen=spec.listen_addr,
        port=port,
        internal_port=internal_port,
        auth=security is not None,
        tls=bool(security and security.public_tls),
        services=list(spec.service_names),
    )
    return running


# A crashed background job restarts after this backoff (a loop must never die silently).
BACKGROUND_BACKOFF = Backoff(base_seconds=1.0, cap_seconds=30.0)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def _refuse_plaintext_beyond_loopback(listen_addr: str, environment: str) -> None:
    """API keys must not cross a network in clear: plaintext is for loopback.
    Production refuses to start; elsewhere (docker compose's private network)
    it is allowed with a warning."""
    host = listen_addr.rpartition(":")[0]
    if host in _LOOPBACK_HOSTS:
        return
    if environment == "production":
        raise OSError(
            f"refusing plaintext gRPC with authentication on {listen_addr}: "
            "set TLS_PUBLIC=true (the service's certificate) or listen on 127.0.0.1"
        )
    log.warning("server.plaintext_beyond_loopback", listen=listen_addr)


async def _supervise(job: Callable[[], Awaitable[None]]) -> None:
    """Run a background job, restarting it after a crash until it returns."""
    name = getattr(job, "__qualname__", repr(job))
    await keep_running(name, job, backoff=BACKGROUND_BACKOFF, traceback=True)


async def serve(spec: ServiceSpec, stop: asyncio.Event) -> None:
    """Run the server until `stop` is set (shared.entrypoint sets it on SIGTERM
    or SIGINT) or it terminates, then shut down gracefully."""
    running = await start_server(spec)
    waiter = asyncio.create_task(running.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await running.stop()
    waiter.cancel()
    stopper.cancel()
