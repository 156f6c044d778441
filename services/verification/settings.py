"""Settings of the verification service and its engine (loaded by shared.config:
environment over TOML over defaults). One class: the service loads it, and the
engine, its fetchers and its pool workers read the same object (frozen and made
of plain values, so it pickles cheaply into pool workers)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import (
    CommonSettings,
    ConfigError,
    check_key_text,
    choice,
    key_bytes,
    listen,
    optional_listen,
    positive,
    secret,
    setting,
    url,
)

DEFAULT_OS_ALLOWLIST = Path(__file__).resolve().parent / "data" / "os_images.json"

# The TCB statuses Intel's collateral (and dcap-qvl) report.
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)


@dataclass(frozen=True)
class ReportStoreSettings:
    """Where signed reports go: a local folder (embedded default) or S3; built by
    VerificationSettings.report_store (tests build their own)."""

    local_dir: Path = Path("var/reports")
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    s3_create_bucket: bool = False
    # Server-side encryption asked of S3 on every PUT: "" (the bucket's
    # default), "AES256" (SSE-S3) or "aws:kms" (SSE-KMS, with s3_sse_kms_key_id
    # or the store's default key).
    s3_sse: str = ""
    s3_sse_kms_key_id: str = ""
    # The local folder's key-encryption key (32 bytes): when set, each report
    # file is envelope-encrypted (AES-256-GCM). Empty: files are plain JSON.
    local_encryption_key: bytes = field(default=b"", repr=False)

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket)


# The hosts the default URLs name, and the app endpoints under Phala's domains.
DEFAULT_ALLOWED_FETCH_HOSTS: tuple[str, ...] = (
    "cloud-api.phala.com",
    "cloud-api.phala.network",
    "*.phala.network",
    "api.redpill.ai",
    "cloudflare-dns.com",
    "dns.google",
    "crt.sh",
)


def _check_cidrs(value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not a CIDR network: {item!r}") from None


def _check_hex_list(value: tuple[str, ...]) -> None:
    for item in value:
        text = str(item).lower().removeprefix("0x")
        try:
            if not text or len(bytes.fromhex(text)) > 1024:
                raise ValueError
        except ValueError:
            raise ValueError(f"not a hex public key: {item!r}") from None


def _not_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")


@dataclass(frozen=True)
class VerificationSettings(CommonSettings):
    """Everything the verification service, its engine, stores and fetchers are
    configured with."""

    verification_listen_addr: str = listen("127.0.0.1:50053")
    # Prometheus /metrics (empty: none).
    verification_metrics_listen_addr: str = optional_listen("0.0.0.0:9453")
    # Processes verifying quotes; 0 means one per core.
    verification_processes: int = setting(0, check=_not_negative)

    # --- the checks ---
    # TCB statuses the hardware check accepts.
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    # An OS image allowlist (JSON) read besides the built-in one.
    os_allowlist_path: str = ""
    # Use the OS image entries shipped with the verifier (data/os_images.json).
    os_images_shipped: bool = True
    # Look OS image entries up in the service's own store too (the report
    # folder or bucket, under os-images/), before the files above.
    os_images_in_store: bool = True
    # How long a pool worker caches an OS image lookup in the store (0: not at all).
    os_images_cache_seconds: float = setting(5.0, check=_not_negative)
    # Let the os check pass development OS images.
    allow_dev_os_images: bool = False
    # Folder of Intel collateral bundles (QuoteCollateralV3 JSON) to use first.
    collateral_dir: str = ""
    # Folder caching collateral fetched from the PCCS. Empty: DATA_DIR/collateral-cache.
    collateral_cache_dir: str = ""
    pccs_url: str = url("", "http", "https")
    # Ethereum JSON-RPC for the on-chain compose registry (its path may hold a key).
    eth_rpc_url: str = url("", "http", "https", secret_url=True)
    doh_url: str = url("", "http", "https")
    ct_log_url: str = url("", "http", "https")

    # --- evidence fetchers ---
    # Bare base URL (phala_cloud_api_url is a common setting): the fetcher adds
    # /v1/attestation/report once.
    # An app's /prpc/Info endpoint ({app_id}, {domain} filled in).
    phala_app_info_url_template: str = "https://{app_id}-8090.{domain}/prpc/Info"
    redpill_api_url: str = url("https://api.redpill.ai", "http", "https")
    # Bearer token for the redpill attestation API.
    redpill_api_key: str = secret()
    fetch_timeout_seconds: float = positive(10.0)
    # Largest response body a fetcher reads.
    max_response_bytes: int = positive(4 * 1024 * 1024)
    # Host patterns (fnmatch) evidence fetchers may reach; the defaults name the
    # hosts of the default URLs.
    allowed_fetch_hosts: tuple[str, ...] = DEFAULT_ALLOWED_FETCH_HOSTS
    # CIDRs (comma-separated) a fetch may reach although not globally routable,
    # e.g. a PCCS or an API mirror inside the cluster. Empty: public addresses only.
    fetch_allow_private_networks: tuple[str, ...] = setting((), check=_check_cidrs)
    # KMS CA public keys (SubjectPublicKeyInfo DER, hex, comma-separated) trusted
    # as the app's key provider without a quote in the evidence.
    trusted_kms_ca_pubkeys: tuple[str, ...] = setting((), check=_check_hex_list)

    # --- signed reports ---
    # Ed25519 key that signs reports (PEM, PKCS#8). Empty: DATA_DIR/keys/report-signing.pem.
    signing_key_path: str = ""
    # S3 endpoint URL. Empty: reports go to a local folder under DATA_DIR.
    s3_endpoint: str = url("", "http", "https")
    s3_access_key_id: str = secret()
    s3_secret_access_key: str = secret()
    s3_bucket: str = "verification-results"
    s3_region: str = "us-east-1"
    # Server-side encryption of reports: "" (the bucket's default), "AES256"
    # (SSE-S3) or "aws:kms" (SSE-KMS, with S3_SSE_KMS_KEY_ID or the default key).
    s3_sse: str = choice("", "", "AES256", "aws:kms")
    s3_sse_kms_key_id: str = ""
    # Key that envelope-encrypts reports in the local folder (32 bytes: 64 hex
    # digits or base64). Empty: report files are plain JSON.
    report_encryption_key: str = setting("", secret=True, check=check_key_text)

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.allowed_tcb_statuses) - TCB_STATUSES)
        if unknown:
            raise ConfigError(
                "allowed_tcb_statuses",
                f"unknown TCB status {unknown[0]!r}; one of {', '.join(sorted(TCB_STATUSES))}",
            )

    # Derived -----------------------------------------------------------
    @property
    def os_allowlist_paths(self) -> tuple[Path, ...]:
        """The shipped allowlist (unless OS_IMAGES_SHIPPED is off), then OS_ALLOWLIST_PATH's."""
        shipped = (DEFAULT_OS_ALLOWLIST,) if self.os_images_shipped else ()
        extra = (Path(self.os_allowlist_path),) if self.os_allowlist_path else ()
        return (*shipped, *extra)

    @property
    def collateral_path(self) -> Path | None:
        return Path(self.collateral_dir) if self.collateral_dir else None

    @property
    def collateral_cache_path(self) -> Path:
        return Path(self.collateral_cache_dir or Path(self.data_dir) / "collateral-cache")

    @property
    def signing_key_file(self) -> Path:
        return Path(self.signing_key_path or Path(self.data_dir) / "keys" / "report-signing.pem")

    @property
    def report_store(self) -> ReportStoreSettings:
        """Where signed reports go: S3 when S3_ENDPOINT is set, else DATA_DIR."""
        uses_s3 = bool(self.s3_endpoint)
        return ReportStoreSettings(
            local_dir=Path(self.data_dir),
            s3_endpoint=self.s3_endpoint,
            s3_bucket=self.s3_bucket if uses_s3 else "",
            s3_region=self.s3_region,
            s3_access_key_id=self.s3_access_key_id,
            s3_secret_access_key=self.s3_secret_access_key,
            s3_sse=self.s3_sse,
            s3_sse_kms_key_id=self.s3_sse_kms_key_id,
            local_encryption_key=key_bytes(self.report_encryption_key)
            if self.report_encryption_key
            else b"",
        )
