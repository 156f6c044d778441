"""Authentication for test stacks: dev certificates, internal ports and API
keys, made the way an operator makes them (`make certs`, `make api-key`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.tls import ensure_dev_certs
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tasks", "queue", "verification")


def auth_env(env: dict[str, str], workdir: Path) -> dict[str, str]:
    """`env` with authentication on: certificates under workdir/certs, a free
    internal (mutual-TLS) port per service, the admin key file in workdir."""
    certs = workdir / "certs"
    ensure_dev_certs(certs)
    env = dict(env)
    env.update(
        {
            "AUTH_ENABLED": "true",
            "TLS_DIR": str(certs),
            "ADMIN_KEY_FILE": str(workdir / "admin.key"),
            "IDENTITY_CACHE_SECONDS": env.get("IDENTITY_CACHE_SECONDS", "2"),
        }
    )
    for name in SERVICES:
        port = free_port()
        env[f"{name.upper()}_INTERNAL_LISTEN_ADDR"] = f"127.0.0.1:{port}"
        env[f"{name.upper()}_INTERNAL_ADDR"] = f"127.0.0.1:{port}"
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.tasks", "api-key", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def bootstrap_admin_key(env: dict[str, str]) -> str:
    """The first start's admin key (migrates the database first). On a database
    another stack of the session bootstrapped already, a new admin key."""
    _cli(env, "bootstrap")
    path = Path(env["ADMIN_KEY_FILE"])
    if not path.exists():
        path.write_text(create_key(env, "test-admin", "admin") + "\n")
    return path.read_text().strip()


def create_key(env: dict[str, str], name: str, scopes: str, owner: str = "") -> str:
    """A new key from `make api-key create`; the key as printed once."""
    out = _cli(env, "create", "--name", name, "--scopes", scopes, "--owner", owner)
    for line in out.splitlines():
        if line.startswith("key:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no key in the CLI's output: {out}")
