"""Settings of the verification engine, built by the service from shared config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OS_ALLOWLIST = Path(__file__).resolve().parent / "data" / "os_images.json"

# Size bounds on every evidence input. A real TDX quote is ~5-10 KiB, a dstack
# event log ~10-30 KiB; the bounds leave generous room but stop an attacker
# from making the service allocate without limit.
MAX_QUOTE_BYTES = 64 * 1024
MAX_EVENT_LOG_BYTES = 1024 * 1024
MAX_VM_CONFIG_BYTES = 64 * 1024
MAX_APP_COMPOSE_BYTES = 1024 * 1024
MAX_CERT_CHAIN_BYTES = 256 * 1024
MAX_COLLATERAL_BYTES = 1024 * 1024
MAX_SMALL_FIELD_BYTES = 4 * 1024
# The gateway's acme-info: a quote with its event log per certificate key.
MAX_ACME_INFO_BYTES = 2 * 1024 * 1024


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


@dataclass(frozen=True)
class ReportStoreSettings:
    """Where signed reports go: a local folder (embedded default) or S3."""

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


@dataclass(frozen=True)
class VerificationSettings:
    """Everything the engine, its stores and its fetchers can be configured with.

    Frozen and made of plain values so it pickles cheaply into pool workers.
    """

    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    os_allowlist_paths: tuple[Path, ...] = (DEFAULT_OS_ALLOWLIST,)
    # OS image entries in the service's own store (report_store's folder or
    # bucket, under os-images/), looked up before the files above.
    os_images_in_store: bool = False
    os_images_cache_seconds: float = 5.0
    allow_dev_os_images: bool = False
    collateral_dir: Path | None = None
    collateral_cache_dir: Path | None = None
    pccs_url: str = ""
    eth_rpc_url: str = ""
    doh_url: str = ""
    ct_log_url: str = ""
    # Bare bases: the fetchers add /api/v1/apps/{id}/attestations and
    # /v1/attestation/report once.
    phala_cloud_api_url: str = "https://cloud-api.phala.com"
    phala_app_info_url_template: str = "https://{app_id}-8090.{domain}/prpc/Info"
    redpill_api_url: str = "https://api.redpill.ai"
    redpill_api_key: str = field(default="", repr=False)
    fetch_timeout_seconds: float = 10.0
    allowed_fetch_hosts: tuple[str, ...] = DEFAULT_ALLOWED_FETCH_HOSTS
    # CIDRs a fetch may reach although not globally routable (a PCCS or an API
    # mirror inside the cluster); the host must still match allowed_fetch_hosts.
    fetch_allow_private_networks: tuple[str, ...] = ()
    # KMS CA public keys (SubjectPublicKeyInfo DER, hex) trusted without a quote.
    trusted_kms_ca_pubkeys: tuple[str, ...] = ()
    signing_key_path: Path = Path("var/keys/report-signing-ed25519.pem")
    report_store: ReportStoreSettings = field(default_factory=ReportStoreSettings)
    max_response_bytes: int = 4 * 1024 * 1024
