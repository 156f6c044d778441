"""Entry point: `python -m services.verification [serve]` runs VerificationService
(public) and VerificationEngineService (internal) on VERIFICATION_LISTEN_ADDR
(default 0.0.0.0:50053)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shared.entrypoint import new_parser, run_main, serving
from shared.grpc_server import DependencyProbe, ServiceSpec
from shared.retry import Backoff, keep_running
from shared.security import internal_channel, service_security

from .access import ReportAccess
from .collateral import CollateralStore, DcapPccsClient, LocalCollateralCache
from .fetchers import EvidenceFetcher
from .key_history import build_key_history
from .os_image_store import build_os_image_store, load_entry_files
from .os_images_server import SERVICE_NAME as OS_IMAGE_SERVICE_NAME
from .os_images_server import OsImageServicer
from .os_images_service import OsImageCatalogService
from .pool import VerificationPool
from .report import load_or_create_signing_key
from .report_store import ReportStore, S3ReportStore, build_report_store
from .server import (
    ENGINE_SERVICE_NAME,
    SERVICE_NAME,
    VerificationEngineServicer,
    VerificationServicer,
)
from .service import VerificationService
from .settings import VerificationSettings
from .task_inputs import GrpcTaskInputs
from .version import VERIFIER_VERSION

# Creating the report bucket while S3 is not up yet.
BUCKET_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=10.0)


@dataclass(frozen=True)
class _StoreParts:
    """The report store the settings select, its probe, and its background jobs."""

    store: ReportStore
    probe: DependencyProbe
    background: list[Callable[[], Awaitable[None]]]


def _s3_store(s3_store: S3ReportStore) -> _StoreParts:

    async def check_store() -> str:
        await asyncio.to_thread(s3_store.client.head_bucket, Bucket=s3_store.bucket)
        return "s3"

    async def ensure_bucket() -> None:
        # S3 may come up after us: keep trying to create the bucket until it exists.
        await keep_running(
            "s3.ensure_bucket",
            lambda: asyncio.to_thread(s3_store.ensure_bucket),
            backoff=BUCKET_BACKOFF,
        )

    return _StoreParts(s3_store, DependencyProbe("s3", check_store), [ensure_bucket])


def _folder_store(folder: ReportStore, root: Path) -> _StoreParts:
    async def check_store() -> str:
        def writable() -> str:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
            return "local-folder"

        return await asyncio.to_thread(writable)

    return _StoreParts(folder, DependencyProbe("local-folder", check_store), [])


def build_spec(settings: VerificationSettings) -> ServiceSpec:
    store_settings = settings.report_store
    # The same store the pool's processes write to (each builds its own).
    built = build_report_store(store_settings)
    parts = (
        _s3_store(built)
        if isinstance(built, S3ReportStore)
        else _folder_store(built, store_settings.local_dir)
    )
    store, background = parts.store, parts.background

    collateral = CollateralStore(
        local_dir=settings.collateral_path,
        cache=LocalCollateralCache(settings.collateral_cache_path),
        pccs=DcapPccsClient(settings.pccs_url) if settings.pccs_url else None,
    )
    # Loaded once: the pool's processes sign the reports with it, this
    # process the summaries and tokens, and it is the key the service publishes.
    signing_key = load_or_create_signing_key(settings.signing_key_file)
    pool = VerificationPool(
        settings,
        max_workers=settings.verification_processes or None,
        collateral_store=collateral,
        signing_key=signing_key,
    )
    service = VerificationService(
        pool=pool,
        store=store,
        signing_key=signing_key,
        fetcher=EvidenceFetcher(settings),
        bucket=store_settings.s3_bucket,
    )

    async def check_pool() -> str:
        return f"{pool.max_workers} processes; {VERIFIER_VERSION}"

    async def warm_up() -> None:
        await asyncio.to_thread(pool.warm_up)

    key_history = build_key_history(store_settings)

    async def record_key() -> None:
        # The store may come up after us: keep trying until the key is recorded
        # (JWKS lists it with the earlier keys of this store).
        await keep_running(
            "keys.record",
            lambda: asyncio.to_thread(key_history.record, service.key_info.public_key),
            backoff=BUCKET_BACKOFF,
        )

    os_images = OsImageCatalogService(
        build_os_image_store(store_settings), load_entry_files(settings.os_allowlist_paths)
    )
    security = service_security(settings, "verification")
    access = ReportAccess(settings) if security is not None else None

    def register(server: object) -> None:
        from verifier.verification.v1 import (
            engine_pb2_grpc,
            os_images_pb2_grpc,
            verification_pb2_grpc,
        )

        # Called inside the running loop: the tasks service's channel binds to it.
        inputs = GrpcTaskInputs(
            internal_channel(settings, "tasks", "verification"), settings.call_timeout_seconds
        )
        service.task_inputs = inputs
        closing.append(inputs.aclose)
        verification_pb2_grpc.add_VerificationServiceServicer_to_server(
            VerificationServicer(service, key_history, access), server
        )
        engine_pb2_grpc.add_VerificationEngineServiceServicer_to_server(
            VerificationEngineServicer(service), server
        )
        os_images_pb2_grpc.add_OsImageServiceServicer_to_server(OsImageServicer(os_images), server)

    closing: list[Callable[[], Awaitable[None]]] = [service.close]
    if access is not None:
        closing.append(access.close)

    return ServiceSpec(
        name="verification",
        service_names=[SERVICE_NAME, ENGINE_SERVICE_NAME, OS_IMAGE_SERVICE_NAME],
        register=register,
        listen_addr=settings.verification_listen_addr,
        probes=[parts.probe, DependencyProbe("engine", check_pool)],
        background=[*background, warm_up, record_key],
        on_stop=closing,
        health_probe_interval_seconds=settings.health_probe_interval_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        metrics_listen_addr=settings.verification_metrics_listen_addr,
        security=security,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = new_parser("python -m services.verification serve")
    return run_main("verification", VerificationSettings, serving(build_spec), argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
