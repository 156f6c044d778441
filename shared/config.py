"""Configuration: environment variables over an optional TOML file over defaults.

Every setting is one field of `Settings`. Its environment variable is the
field name in upper case (the reference system's names: DATABASE_URL,
REDIS_URL, QUEUE_NAME, S3_ENDPOINT, ...). A TOML file (``--config FILE`` or
VERIFIER_CONFIG) holds the same names in lower case, at the top level or in
tables whose name prefixes the key (``[s3] bucket = ...`` is ``s3_bucket``).

``python -m shared.config --check-config`` (and every service's
``--check-config``) prints the effective configuration with secrets masked and
exits 2 naming the field when one is invalid.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import ipaddress
import json
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit, urlunsplit

CONFIG_FILE_ENV = "VERIFIER_CONFIG"
MASK = "********"

# The project root: embedded-mode files (SQLite, report folder) default under data/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """An invalid setting; names the field so an operator can find it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _secret() -> Any:
    return field(default="", metadata={"secret": True})


def _listen(default: str) -> Any:
    # Port 0 lets the OS choose (tests); a peer address needs a real port.
    return field(default=default, metadata={"check": _check_address(lowest_port=0)})


def _optional_listen(default: str) -> Any:
    # Empty turns the listener off.
    check = _check_address(lowest_port=0)
    return field(default=default, metadata={"check": lambda v: check(v) if v else None})


def _peer(default: str) -> Any:
    return field(default=default, metadata={"check": _check_address(lowest_port=1)})


def _check_address(lowest_port: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        host, sep, port = str(value).rpartition(":")
        if not sep or not host or not port.isdigit() or not lowest_port <= int(port) < 65536:
            raise ValueError(
                f"expected HOST:PORT with a port in {lowest_port}-65535, got {value!r}"
            )

    return check


def _check_port(value: Any) -> None:
    if not 0 < int(value) < 65536:
        raise ValueError(f"expected a port in 1-65535, got {value}")


def _check_positive(value: Any) -> None:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


def _check_url(*schemes: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not value:
            return
        parts = urlsplit(str(value))
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}, got {parts.scheme!r}")

    return check


def key_bytes(text: str) -> bytes:
    """A 32-byte key from configuration: 64 hex digits, or base64 (standard or URL-safe)."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("expected 32 bytes as 64 hex digits or base64")
    return raw


def _check_key_text(value: Any) -> None:
    if value:
        key_bytes(str(value))


def _check_cidrs(value: Any) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not a CIDR network: {item!r}") from None


def _check_hex_list(value: Any) -> None:
    for item in value:
        text = str(item).lower().removeprefix("0x")
        try:
            if not text or len(bytes.fromhex(text)) > 1024:
                raise ValueError
        except ValueError:
            raise ValueError(f"not a hex public key: {item!r}") from None


def _check_choice(*choices: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return check


@dataclass(frozen=True)
class Settings:
    """The effective configuration of every service (one flat namespace)."""

    # --- reference system's names ---
    # PostgreSQL URL (postgresql://...). Empty: embedded SQLite file under data/.
    database_url: str = field(
        default="",
        metadata={
            "secret_url": True,
            "check": _check_url("postgresql", "postgresql+psycopg", "postgres", "sqlite"),
        },
    )
    # Redis URL. Empty: the embedded in-process queue.
    redis_url: str = field(
        default="", metadata={"secret_url": True, "check": _check_url("redis", "rediss")}
    )
    queue_name: str = "verification-queue"
    queue_concurrency: int = field(default=5, metadata={"check": _check_positive})
    # S3 endpoint URL. Empty: reports go to a local folder (report_dir).
    s3_endpoint: str = field(default="", metadata={"check": _check_url("http", "https")})
    s3_access_key_id: str = _secret()
    s3_secret_access_key: str = _secret()
    s3_bucket: str = "verification-results"
    s3_region: str = "us-east-1"
    # Server-side encryption of reports: "" (the bucket's default), "AES256"
    # (SSE-S3) or "aws:kms" (SSE-KMS, with S3_SSE_KMS_KEY_ID or the default key).
    s3_sse: str = field(default="", metadata={"check": _check_choice("", "AES256", "aws:kms")})
    s3_sse_kms_key_id: str = ""
    # Key that envelope-encrypts reports in the local folder (32 bytes: 64 hex
    # digits or base64). Empty: report files are plain JSON.
    report_encryption_key: str = field(
        default="", metadata={"secret": True, "check": _check_key_text}
    )
    # The gateway's listen host and port.
    host: str = "0.0.0.0"
    port: int = field(default=3000, metadata={"check": _check_port})

    # --- each service's listen address ---
    tasks_listen_addr: str = _listen("0.0.0.0:50051")
    queue_listen_addr: str = _listen("0.0.0.0:50052")
    verification_listen_addr: str = _listen("0.0.0.0:50053")
    # Each gRPC service's Prometheus /metrics (empty: none); the gateway serves it on PORT.
    tasks_metrics_listen_addr: str = _optional_listen("0.0.0.0:9451")
    queue_metrics_listen_addr: str = _optional_listen("0.0.0.0:9452")
    verification_metrics_listen_addr: str = _optional_listen("0.0.0.0:9453")
    worker_metrics_listen_addr: str = _optional_listen("")
    # Record metrics at all (false: no /metrics, no gRPC interceptor, no counters).
    metrics_enabled: bool = True
    # --- peers' addresses (gRPC targets) ---
    tasks_addr: str = _peer("127.0.0.1:50051")
    queue_addr: str = _peer("127.0.0.1:50052")
    verification_addr: str = _peer("127.0.0.1:50053")

    # --- operations ---
    environment: str = "development"
    log_level: str = field(
        default="info", metadata={"check": _check_choice("debug", "info", "warning", "error")}
    )
    log_format: str = field(default="json", metadata={"check": _check_choice("json", "console")})
    # Folder for the embedded mode's files (SQLite database, report folder, keys).
    data_dir: str = str(PROJECT_ROOT / "data")
    # Apply migrations when the tasks service starts.
    migrate_on_start: bool = True
    # Seconds an in-flight call gets to finish on SIGTERM.
    shutdown_grace_seconds: float = field(default=10.0, metadata={"check": _check_positive})
    # Seconds between dependency probes that drive grpc.health.
    health_probe_interval_seconds: float = field(default=5.0, metadata={"check": _check_positive})

    # --- tasks service ---
    # Pending tasks older than this are enqueued again by the reconciler.
    reconcile_after_seconds: float = field(default=10.0, metadata={"check": _check_positive})
    reconcile_interval_seconds: float = field(default=5.0, metadata={"check": _check_positive})
    database_pool_size: int = field(default=10, metadata={"check": _check_positive})
    # Queued or active tasks untouched this long are sent to the queue again (its
    # entry may be lost, e.g. Redis restarted without persistence); the queue's
    # EnqueueTask is idempotent per task, so a live entry is not duplicated.
    requeue_stale_after_seconds: float = field(default=900.0, metadata={"check": _check_positive})
    # The scheduler: one pass every this many seconds creates the due apps' tasks.
    scheduler_enabled: bool = True
    scheduler_interval_seconds: float = field(default=30.0, metadata={"check": _check_positive})
    scheduler_batch_size: int = field(default=500, metadata={"check": _check_positive})
    # Phala Cloud app sync (off while the key is empty), every this many seconds.
    phala_cloud_api_key: str = _secret()
    app_sync_interval_seconds: float = field(default=3600.0, metadata={"check": _check_positive})
    # Retention of finished tasks, per status: removed after an age (seconds) or
    # beyond a count (newest kept); 0 keeps them. Defaults: failed after 48 h.
    retention_failed_max_age_seconds: float = 48 * 3600.0
    retention_failed_max_count: int = 0
    retention_completed_max_age_seconds: float = 0.0
    retention_completed_max_count: int = 0
    retention_cancelled_max_age_seconds: float = 0.0
    retention_cancelled_max_count: int = 0
    retention_interval_seconds: float = field(default=600.0, metadata={"check": _check_positive})
    retention_batch_size: int = field(default=500, metadata={"check": _check_positive})
    # Deadline of one QueueService.EnqueueTask call from the tasks service.
    enqueue_timeout_seconds: float = field(default=2.0, metadata={"check": _check_positive})

    # --- queue and workers ---
    # A job that meets transient faults (a dependency down) is retried with a
    # capped, jittered backoff from retry_base_seconds for this long, counted
    # from its first fault, and only then fails its task.
    retry_budget_seconds: float = field(default=600.0, metadata={"check": _check_positive})
    retry_base_seconds: float = field(default=1.0, metadata={"check": _check_positive})
    worker_heartbeat_seconds: float = field(default=2.0, metadata={"check": _check_positive})
    worker_offline_after_seconds: float = field(default=15.0, metadata={"check": _check_positive})
    # A job not acknowledged for this long is delivered to another worker. A
    # live worker re-claims its jobs every heartbeat, so only a dead (or stalled)
    # one's jobs get this idle: just past worker_offline_after_seconds, a killed
    # worker's jobs move on once ListWorkers shows it offline.
    job_idle_timeout_seconds: float = field(default=20.0, metadata={"check": _check_positive})
    # A job delivered more often than this (every worker that took it died with
    # it: a crash, a kill, out of memory) fails its task instead of killing more.
    job_max_deliveries: int = field(default=5, metadata={"check": _check_positive})
    # Jobs the Redis stream may hold; EnqueueTask answers RESOURCE_EXHAUSTED beyond.
    queue_max_length: int = field(default=1_000_000, metadata={"check": _check_positive})
    # Offline workers are dropped from ListWorkers after this long.
    worker_forget_after_seconds: float = field(default=600.0, metadata={"check": _check_positive})
    # Deadline of a worker's VerificationEngineService.Verify call (evidence fetches included).
    verify_timeout_seconds: float = field(default=120.0, metadata={"check": _check_positive})

    # --- verification service ---
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    os_allowlist_path: str = ""
    # Use the OS image entries shipped with the verifier (data/os_images.json).
    os_images_shipped: bool = True
    # How long a pool worker caches an OS image lookup in the store.
    os_images_cache_seconds: float = 5.0
    # Let the os check pass development OS images.
    allow_dev_os_images: bool = False
    collateral_dir: str = ""
    pccs_url: str = field(default="", metadata={"check": _check_url("http", "https")})
    eth_rpc_url: str = field(
        default="", metadata={"secret_url": True, "check": _check_url("http", "https")}
    )
    doh_url: str = field(default="", metadata={"check": _check_url("http", "https")})
    ct_log_url: str = field(default="", metadata={"check": _check_url("http", "https")})
    # Bare base URL; the path /api/v1/apps/{app_id}/attestations is added once.
    phala_cloud_api_url: str = field(
        default="https://cloud-api.phala.com",
        metadata={"check": _check_url("http", "https")},
    )
    # Bare base URL; the path /v1/attestation/report is added once.
    redpill_api_url: str = field(
        default="https://api.redpill.ai", metadata={"check": _check_url("http", "https")}
    )
    # Bearer token for the redpill attestation API.
    redpill_api_key: str = _secret()
    fetch_timeout_seconds: float = field(default=10.0, metadata={"check": _check_positive})
    # Host patterns (fnmatch) evidence fetchers may reach; the defaults name the
    # hosts of the default URLs.
    allowed_fetch_hosts: tuple[str, ...] = (
        "cloud-api.phala.com",
        "cloud-api.phala.network",
        "*.phala.network",
        "api.redpill.ai",
        "cloudflare-dns.com",
        "dns.google",
        "crt.sh",
    )
    # CIDRs (comma-separated) a fetch may reach although not globally routable,
    # e.g. a PCCS or an API mirror inside the cluster. Empty: public addresses only.
    fetch_allow_private_networks: tuple[str, ...] = field(
        default=(), metadata={"check": _check_cidrs}
    )
    # KMS CA public keys (SubjectPublicKeyInfo DER, hex, comma-separated) trusted
    # as the app's key provider without a quote in the evidence.
    trusted_kms_ca_pubkeys: tuple[str, ...] = field(default=(), metadata={"check": _check_hex_list})
    # Ed25519 key that signs reports (PEM, PKCS#8). Empty: data_dir/signing_key.pem.
    signing_key_path: str = ""
    # Processes verifying quotes; 0 means one per core.
    verification_processes: int = 0

    # --- gateway ---
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata={"check": _check_positive})
    call_timeout_seconds: float = field(default=30.0, metadata={"check": _check_positive})
    # Longest a server-streaming call (SSE, e.g. :watch) runs; clients reconnect after.
    stream_timeout_seconds: float = field(default=3600.0, metadata={"check": _check_positive})
    # Seconds between SSE keep-alive comments, so proxies keep idle streams open.
    sse_keepalive_seconds: float = field(default=15.0, metadata={"check": _check_positive})
    # Seconds /health/detailed waits for each service's health and diagnostics.
    health_timeout_seconds: float = field(default=3.0, metadata={"check": _check_positive})
    # Origins a browser may call the REST API from (CORS); empty: none, "*": any.
    cors_allow_origins: tuple[str, ...] = ()

    # Derived -----------------------------------------------------------
    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL: DATABASE_URL, or the embedded SQLite file."""
        if not self.database_url:
            return f"sqlite:///{Path(self.data_dir) / 'tasks.db'}"
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def masked(self) -> dict[str, Any]:
        """Every setting, secrets replaced by a mask and URL passwords hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = MASK
            elif f.metadata.get("secret_url") and value:
                value = mask_url(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def mask_url(url: str) -> str:
    """The URL with any password (and the path of an RPC URL key) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{MASK}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _parse(name: str, kind: Any, raw: Any) -> Any:
    """Convert a raw env/TOML value to the field's type, or raise ConfigError."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError(f"expected an integer, got {raw!r}")
            return int(str(raw).strip())
        if kind is float:
            return float(str(raw).strip())
        if kind == tuple[str, ...]:
            if isinstance(raw, list | tuple):
                return tuple(str(item) for item in raw)
            return tuple(item.strip() for item in str(raw).split(",") if item.strip())
        return str(raw)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".lower().replace("-", "_")
        if isinstance(value, dict):
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Build Settings from defaults, then the TOML file, then the environment."""
    env = os.environ if env is None else env
    path = config_file or env.get(CONFIG_FILE_ENV) or ""
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = _flatten(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("config_file", f"cannot read {path}: {exc}") from None
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(file_values) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting in {path}")
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for name, f in known.items():
        raw: Any = dataclasses.MISSING
        if name in file_values:
            raw = file_values[name]
        if name.upper() in env:
            raw = env[name.upper()]
        if raw is dataclasses.MISSING:
            continue
        value = _parse(name, hints[name], raw)
        check = f.metadata.get("check")
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
        values[name] = value
    settings = Settings(**values)
    for f in fields(settings):
        check = f.metadata.get("check")
        if check is not None and f.name not in values:
            check(getattr(settings, f.name))
    return settings


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every service entry point shares."""
    parser.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_FILE_ENV})")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective configuration (secrets masked) and exit; 2 if invalid",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load settings for an entry point; handles --check-config and exits on errors."""
    try:
        settings = load_settings(config_file=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "check_config", False):
        print(json.dumps(settings.masked(), indent=2, sort_keys=True))
        raise SystemExit(0)
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.config")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    args.check_config = True
    settings_from_args(args)


if __name__ == "__main__":
    main()
