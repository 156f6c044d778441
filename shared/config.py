"""The one settings loader: environment variables over an optional TOML file over
defaults, for any settings class.

Each service declares its own typed settings in ``services/<name>/settings.py``
(a frozen dataclass extending `CommonSettings`); this module knows none of them.
A setting's environment variable is its field name in upper case (the reference
system's names: DATABASE_URL, REDIS_URL, QUEUE_NAME, S3_ENDPOINT, ...). A TOML
file (``--config FILE`` or VERIFIER_CONFIG) holds the same names in lower case,
at the top level or in tables whose name prefixes the key (``[s3] bucket = ...``
is ``s3_bucket``). One file configures the whole stack, so a service reads the
keys it knows; ``make check-config`` rejects a key no service knows.

Everything is checked at load time: each field's own check, then the class's
`validate()` for rules across fields. ``--check-config`` prints the effective
settings with secrets masked, or exits 2 naming the invalid field.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit, urlunsplit

CONFIG_FILE_ENV = "VERIFIER_CONFIG"
MASK = "********"
# How an entry point reports a ConfigError on stderr (before exiting 2).
INVALID_CONFIGURATION = "invalid configuration: "

# The project root: embedded-mode files (SQLite, report folder) default under data/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

Check = Callable[[Any], None]


class ConfigError(ValueError):
    """An invalid setting; names the field so an operator can find it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


# --- declaring a setting -------------------------------------------------------


def setting(
    default: Any, *, check: Check | None = None, secret: bool = False, secret_url: bool = False
) -> Any:
    """A settings field: its default, a check of its value (raises ValueError),
    and whether it is a secret (masked) or a URL whose password is."""
    metadata: dict[str, Any] = {}
    if check is not None:
        metadata["check"] = check
    if secret:
        metadata["secret"] = True
    if secret_url:
        metadata["secret_url"] = True
    if isinstance(default, list | dict | set):
        raise TypeError("settings are immutable: use a tuple")
    # A secret stays out of repr() too: a settings object may end up in a log line.
    return field(default=default, metadata=metadata, repr=not (secret or secret_url))


def secret() -> Any:
    """A secret string (a key, a password): masked wherever settings are printed."""
    return setting("", secret=True)


def listen(default: str) -> Any:
    """A HOST:PORT to listen on; port 0 lets the OS choose (tests)."""
    return setting(default, check=address_check(lowest_port=0))


def optional_listen(default: str) -> Any:
    """A HOST:PORT to listen on, or empty for no listener."""
    check = address_check(lowest_port=0)
    return setting(default, check=lambda value: check(value) if value else None)


def peer(default: str) -> Any:
    """A peer's HOST:PORT (a gRPC target): needs a real port."""
    return setting(default, check=address_check(lowest_port=1))


def positive(default: float) -> Any:
    return setting(default, check=check_positive)


def url(default: str, *schemes: str, secret_url: bool = False) -> Any:
    """A URL with one of `schemes`, or empty."""
    return setting(default, check=url_check(*schemes), secret_url=secret_url)


def choice(default: str, *choices: str) -> Any:
    return setting(default, check=choice_check(*choices))


# --- checks --------------------------------------------------------------------


def address_check(lowest_port: int) -> Check:
    def check(value: Any) -> None:
        host, sep, port = str(value).rpartition(":")
        if not sep or not host or not port.isdigit() or not lowest_port <= int(port) < 65536:
            raise ValueError(
                f"expected HOST:PORT with a port in {lowest_port}-65535, got {value!r}"
            )

    return check


def check_positive(value: Any) -> None:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


def check_not_negative(value: Any) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")


def url_check(*schemes: str) -> Check:
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


def check_key_text(value: Any) -> None:
    if value:
        key_bytes(str(value))


def choice_check(*choices: str) -> Check:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return check


# --- what every service shares -------------------------------------------------


@dataclass(frozen=True)
class CommonSettings:
    """The settings every process has: how it runs and logs, where its files go,
    and where the services are (the deployment's topology, one place for it)."""

    environment: str = "development"
    log_level: str = choice("info", "debug", "info", "warning", "error")
    log_format: str = choice("json", "json", "console")
    # Folder for the embedded mode's files (SQLite database, report folder, keys).
    data_dir: str = str(PROJECT_ROOT / "data")
    # Seconds an in-flight call gets to finish on SIGTERM.
    shutdown_grace_seconds: float = positive(10.0)
    # Seconds between dependency probes that drive grpc.health.
    health_probe_interval_seconds: float = positive(5.0)
    # Record metrics at all (false: no /metrics, no gRPC interceptor, no counters).
    metrics_enabled: bool = True
    # --- peers' addresses (gRPC targets) ---
    tasks_addr: str = peer("127.0.0.1:50051")
    queue_addr: str = peer("127.0.0.1:50052")
    verification_addr: str = peer("127.0.0.1:50053")
    # Deadline of an ordinary (unary) call to a peer service.
    call_timeout_seconds: float = positive(30.0)
    # --- authentication and service identity (shared.auth, shared.security) ---
    # API keys on every external RPC, service certificates on the internal ones.
    auth_enabled: bool = True
    # Folder of ca.crt and NAME.crt/NAME.key per service. Empty: data_dir/certs.
    tls_dir: str = ""
    # Serve the public ports over TLS (the service's certificate; no client certificate).
    tls_public: bool = False
    # Each service's internal (mutual TLS only) port, and where peers reach it.
    tasks_internal_listen_addr: str = listen("127.0.0.1:50061")
    queue_internal_listen_addr: str = listen("127.0.0.1:50062")
    verification_internal_listen_addr: str = listen("127.0.0.1:50063")
    tasks_internal_addr: str = peer("127.0.0.1:50061")
    queue_internal_addr: str = peer("127.0.0.1:50062")
    verification_internal_addr: str = peer("127.0.0.1:50063")
    # Seconds a validated API key is trusted before asking again (a revocation
    # takes effect everywhere within this).
    identity_cache_seconds: float = positive(10.0)
    # Where the first start writes the admin key. Empty: data_dir/admin.key.
    admin_key_file: str = ""
    # Per-key token buckets: requests per second and burst; a rate of 0 turns one off.
    rate_limit_create_per_second: float = setting(20.0, check=check_not_negative)
    rate_limit_create_burst: int = positive(100)
    rate_limit_read_per_second: float = setting(200.0, check=check_not_negative)
    rate_limit_read_burst: int = positive(400)
    # --- settings two services read (each defined here, once) ---
    # A job delivered more often than this (every worker that took it died with
    # it: a crash, a kill, out of memory) fails its task instead of killing more
    # (the queue counts deliveries; the tasks service refuses a start beyond).
    job_max_deliveries: int = positive(5)
    # Bare base URL of the Phala Cloud API (evidence fetches, app sync); the
    # path /api/v1/apps/{app_id}/attestations is added once.
    phala_cloud_api_url: str = url("https://cloud-api.phala.com", "http", "https")

    def validate(self) -> None:
        """Rules across fields; raises ConfigError naming the field. Subclasses
        extend it (calling super) for their own rules."""

    @property
    def effective_tls_dir(self) -> str:
        return self.tls_dir or str(Path(self.data_dir) / "certs")

    @property
    def effective_admin_key_file(self) -> str:
        return self.admin_key_file or str(Path(self.data_dir) / "admin.key")

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
    """The URL with any password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{MASK}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def setting_names(cls: type[CommonSettings]) -> set[str]:
    return {f.name for f in fields(cls)}


def secret_names(cls: type[CommonSettings]) -> set[str]:
    return {f.name for f in fields(cls) if f.metadata.get("secret") or f.metadata.get("secret_url")}


# --- loading -------------------------------------------------------------------

S = TypeVar("S", bound=CommonSettings)


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse(name: str, kind: Any, raw: Any) -> Any:
    """Convert a raw env/TOML value to the field's type, or raise ConfigError."""
    try:
        if kind is bool:
            return _parse_bool(raw)
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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TOML file's settings, flattened to field names."""
    try:
        return _flatten(tomllib.loads(Path(path).read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("config_file", f"cannot read {path}: {exc}") from None


def config_file_path(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> str:
    env = os.environ if env is None else env
    return str(config_file or env.get(CONFIG_FILE_ENV) or "")


def check_known_keys(path: str, known: Iterable[str]) -> None:
    """Refuse a key in the file that no settings class declares (a typo)."""
    if not path:
        return
    unknown = sorted(set(read_config_file(path)) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting in {path}")


def _checked(name: str, f: dataclasses.Field[Any], value: Any) -> None:
    check = f.metadata.get("check")
    if check is None:
        return
    try:
        check(value)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


def load_settings(
    cls: type[S],
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    *,
    strict: bool = False,
) -> S:
    """Build `cls` from defaults, then the TOML file, then the environment; every
    value checked, then `validate()`. `strict` refuses file keys `cls` lacks."""
    env = os.environ if env is None else env
    path = config_file_path(env, config_file)
    file_values = read_config_file(path) if path else {}
    known = {f.name: f for f in fields(cls)}
    if strict:
        check_known_keys(path, known)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name in known:
        raw: Any = dataclasses.MISSING
        if name in file_values:
            raw = file_values[name]
        if name.upper() in env:
            raw = env[name.upper()]
        if raw is dataclasses.MISSING:
            continue
        values[name] = _parse(name, hints[name], raw)
    settings = cls(**values)
    for f in fields(settings):
        _checked(f.name, f, getattr(settings, f.name))
    settings.validate()
    return settings


def with_values(cls: type[S], values: Mapping[str, Any]) -> S:
    """`cls` from typed values (tests, benchmarks): the keys it declares are taken,
    the others (another service's settings) ignored; checked like a load."""
    own = setting_names(cls)
    settings = cls(**{key: value for key, value in values.items() if key in own})
    for f in fields(settings):
        _checked(f.name, f, getattr(settings, f.name))
    settings.validate()
    return settings


# --- entry points ----------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every service entry point shares."""
    parser.add_argument("--config", help=f"TOML configuration file (or ${CONFIG_FILE_ENV})")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective configuration (secrets masked) and exit; 2 if invalid",
    )


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    """Load settings for an entry point; handles --check-config and exits on errors."""
    try:
        settings = load_settings(cls, config_file=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"{INVALID_CONFIGURATION}{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "check_config", False):
        print(json.dumps(settings.masked(), indent=2, sort_keys=True))
        raise SystemExit(0)
    return settings
