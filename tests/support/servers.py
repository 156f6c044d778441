"""Real backing servers for tests and benchmarks.

Each finder uses the URL from the environment when set, else the machine's
local server when it answers, else starts a throwaway server from local
binaries (PostgreSQL's pg_ctl, redis-server, SeaweedFS's weed). Nothing is
mocked: tests talk to these over real sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from services.tasks.settings import database_url

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in {timeout}s: {last}")


# --- PostgreSQL -----------------------------------------------------------------


def _pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("no PostgreSQL server binaries (pg_ctl) found; install postgresql")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A server-level URL (database postgres) of a reachable PostgreSQL."""
    env_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if env_url:
        yield database_url(env_url, "libpq")
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _pg_answers(local):
        yield local
        return
    with throwaway_postgres() as server:
        yield server.url


@dataclass
class PostgresProcess:
    """A PostgreSQL server of this test run's own, which a test may restart."""

    url: str
    datadir: Path
    port: int
    run_as: list[str]

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(_pg_bin() / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            # Not captured: the server would inherit the pipe and keep it open.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m <mode>`: every open connection is cut."""
        self.ctl("-w", "-m", mode, "-l", str(self.datadir / "log"), "restart")
        _wait_for(lambda: _pg_answers(self.url), "PostgreSQL")


@contextlib.contextmanager
def throwaway_postgres(**options: str) -> Iterator[PostgresProcess]:
    """A new PostgreSQL server from the local binaries, removed afterwards;
    `options` are extra server settings (shared_preload_libraries=...)."""
    bindir = _pg_bin()
    datadir = Path(tempfile.mkdtemp(prefix="verifier-pg-"))
    port = free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(datadir, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    server = PostgresProcess(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", datadir, port, run_as
    )
    # The options live in the data folder, so a restart keeps them.
    with open(datadir / "postgresql.auto.conf", "a") as conf:
        conf.write(
            f"port = {port}\nunix_socket_directories = '{datadir}'\n"
            "listen_addresses = '127.0.0.1'\nfsync = off\n"
        )
        for name, value in options.items():
            conf.write(f"{name} = '{value}'\n")
    server.ctl("-w", "-l", str(datadir / "log"), "start")
    try:
        _wait_for(lambda: _pg_answers(server.url), "PostgreSQL")
        yield server
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def postgres_database(server_url: str, prefix: str = "verifier_test") -> Iterator[str]:
    """A fresh database on the server, dropped afterwards. Yields its psycopg URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Redis ---------------------------------------------------------------------


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    env_url = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if env_url:
        yield env_url
        return
    local = "redis://127.0.0.1:6379/0"
    if _redis_answers(local):
        yield local
        return
    with throwaway_redis() as url:
        yield url


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A private redis-server process (tests that stop and restart Redis use this)."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found; install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="verifier-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for(lambda: _redis_answers(url), "Redis")
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# --- S3 (SeaweedFS) ------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _weed_port() -> int:
    """A free port p whose p+10000 (where weed puts its gRPC side) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    # The throwaway server's data folder (empty for a server from the
    # environment): tests read the stored bytes to show encryption at rest.
    data_dir: str = ""


def _s3_answers(endpoint: str) -> bool:
    import httpx

    try:
        return httpx.get(endpoint, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


class SeaweedProcess:
    """A throwaway SeaweedFS (master, volume, filer and S3 in one `weed server`)
    that can be stopped and started again on the same folder and ports: its
    buckets, objects and bucket versioning survive the restart."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="verifier-s3-"))
        self.ports = [_weed_port() for _ in range(4)]
        self.endpoint = f"http://127.0.0.1:{self.ports[3]}"
        # SSE-S3 (S3_SSE=AES256) needs a key-encryption key; without one
        # SeaweedFS answers such a PUT with InternalError. Kept across restarts.
        self.kek = os.urandom(32).hex()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> S3Server:
        return S3Server(
            self.endpoint, "test-access-key", "test-secret-key", data_dir=str(self.workdir)
        )

    def start(self, timeout: float = 60.0) -> None:
        weed = shutil.which("weed") or str(VENV_BIN / "weed")
        master, volume, filer, s3 = self.ports
        # An anonymous-access SeaweedFS: credentials are accepted and ignored.
        self.proc = subprocess.Popen(
            [
                weed,
                "server",
                f"-dir={self.workdir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64",
                # Each bucket is a collection that grows its own volumes (several at
                # a time); the default cap of 8 leaves the third bucket with "no
                # writable volumes". Volumes are not preallocated, so many cost little.
                "-volume.max=400",
            ],
            stdout=open(self.workdir / "weed.log", "ab"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "WEED_S3_SSE_KEK": self.kek},
        )
        _wait_for(lambda: _s3_answers(self.endpoint), "SeaweedFS S3", timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_s3() -> Iterator[SeaweedProcess]:
    """A SeaweedFS of the caller's own (a test may stop and start it), removed afterwards."""
    process = SeaweedProcess()
    try:
        process.start()
        yield process
    finally:
        process.remove()


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """S3 over HTTP: S3_ENDPOINT when set, else a throwaway SeaweedFS server."""
    endpoint = os.environ.get("TEST_S3_ENDPOINT") or os.environ.get("S3_ENDPOINT")
    if endpoint:
        yield S3Server(
            endpoint,
            os.environ.get("S3_ACCESS_KEY_ID", ""),
            os.environ.get("S3_SECRET_ACCESS_KEY", ""),
        )
        return
    with throwaway_s3() as process:
        yield process.server
