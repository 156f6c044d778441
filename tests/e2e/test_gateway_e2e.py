"""End to end through the gateway, every service a real process in production
mode (tasks on PostgreSQL, queue on Redis with a worker process, verification on
S3): a task with the real dstack vector as inline evidence, followed over
server-sent events to `completed`, then its signed report fetched over REST.
Also: the gateway process ends open streams and exits promptly on SIGTERM.
Authentication is on: the services hold certificates from the dev CA, the
submitter's key travels through the gateway, and the report is read with it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from services.verification.report import canonical_json
from tests.support.auth import auth_env, bootstrap_admin_key, create_key
from tests.support.servers import S3Server, free_port
from tests.support.vectors import dstack_app_id, dstack_create_task_json

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProcessStack:
    env: dict[str, str]
    gateway: str
    procs: dict[str, subprocess.Popen[bytes]]
    log_dir: Path
    # `authorization` headers: the first start's admin key, and a submitter's.
    admin: dict[str, str] = dataclasses.field(default_factory=dict)
    submitter: dict[str, str] = dataclasses.field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-2500:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def process_stack(
    postgres_url: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessStack]:
    ports = {name: free_port() for name in ("tasks", "queue", "verification", "gateway")}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "S3_", "VERIFIER_"))
    }
    env.update(
        {
            "DATABASE_URL": postgres_url,
            "REDIS_URL": redis_url,
            "QUEUE_NAME": f"gateway-e2e-{uuid.uuid4().hex[:8]}",
            "S3_ENDPOINT": s3.endpoint,
            "S3_ACCESS_KEY_ID": s3.access_key_id,
            "S3_SECRET_ACCESS_KEY": s3.secret_access_key,
            "S3_BUCKET": f"gateway-e2e-{uuid.uuid4().hex[:8]}",
            "DATA_DIR": str(tmp_path_factory.mktemp("e2e-data")),
            "HOST": "127.0.0.1",
            "PORT": str(ports["gateway"]),
            "LOG_LEVEL": "warning",
            "VERIFICATION_PROCESSES": "1",
            "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name in ("tasks", "queue", "verification"):
        env[f"{name.upper()}_LISTEN_ADDR"] = f"127.0.0.1:{ports[name]}"
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{ports[name]}"
    env = auth_env(env, tmp_path_factory.mktemp("e2e-auth"))
    stack = ProcessStack(
        env, f"http://127.0.0.1:{ports['gateway']}", {}, tmp_path_factory.mktemp("e2e-logs")
    )
    stack.admin = {"authorization": f"Bearer {bootstrap_admin_key(env)}"}
    submitter = create_key(env, "e2e-submitter", "tasks.submit", owner="e2e")
    stack.submitter = {"authorization": f"Bearer {submitter}"}
    try:
        stack.start("verification", "services.verification", "serve")
        stack.start("queue", "services.queue")
        stack.start("tasks", "services.tasks")
        stack.start("worker", "services.queue.worker")
        stack.start("gateway", "services.gateway")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for name, proc in stack.procs.items():
                assert proc.poll() is None, f"{name} exited\n{stack.logs()}"
            try:
                if httpx.get(f"{stack.gateway}/health/detailed", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the stack did not become healthy\n" + stack.logs())
        yield stack
    finally:
        for proc in reversed(list(stack.procs.values())):
            _stop(proc)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event name, data) per server-sent event."""
    name, data = "message", None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            yield name, data
            name, data = "message", None


def test_task_with_inline_evidence_is_followed_to_completed_and_its_report_fetched(
    process_stack: ProcessStack,
) -> None:
    base = process_stack.gateway
    body = dstack_create_task_json(appConfigType="phala_cloud")
    auth = process_stack.submitter
    created = httpx.post(f"{base}/api/v1/tasks", json=body, headers=auth, timeout=30)
    assert created.status_code == 200, created.text
    task = created.json()
    assert task["appConfigType"] == "phala_cloud" and task["appId"] == dstack_app_id()

    events: list[tuple[str, Any]] = []
    watch = f"{base}/api/v1/tasks/{task['id']}:watch"
    with httpx.stream("GET", watch, headers=auth, timeout=120) as stream:
        assert stream.status_code == 200
        for name, data in _sse(stream.iter_lines()):
            events.append((name, data))
            if name != "message":
                break
    assert events[-1][0] == "end", events
    updates = [data for name, data in events if name == "message"]
    assert updates[-1]["task"]["status"] == "completed", process_stack.logs()
    # One update per change: the first is the state at subscription; a state
    # change carries the event that produced it, and a progress report (held in
    # memory by the tasks service, not an audit row) only the task's progress.
    changes = [update for update in updates[1:] if "event" in update]
    assert changes and changes[-1]["event"]["type"] == "completed"
    assert len({update["event"]["id"] for update in changes}) == len(changes)
    assert all("event" in update or update["task"]["status"] == "active" for update in updates[1:])

    final = httpx.get(f"{base}/api/v1/tasks/{task['id']}", headers=auth, timeout=30).json()
    assert final["status"] == "completed" and final["progress"] == 100
    assert final["verdict"] == "passed"
    outcomes = {check["check"]: check["status"] for check in final["checkResults"]}
    assert outcomes["hardware"] == outcomes["os"] == outcomes["source_code"] == "passed"
    assert outcomes["dns_caa"] == outcomes["ct_log"] == "skipped"
    assert final["s3Bucket"] == process_stack.env["S3_BUCKET"]

    # The submitter's own report: the verification service asks the tasks
    # service whose task it is, with the submitter's key.
    report = httpx.get(f"{base}/api/v1/tasks/{task['id']}/report", headers=auth, timeout=30)
    assert report.status_code == 200, report.text
    signed = report.json()
    assert signed["signature"] and signed["keyId"]
    assert signed["s3Key"] == final["s3Key"]
    assert json.loads(signed["canonicalJson"]) == signed["report"]
    key = httpx.get(f"{base}/api/v1/verifier/signing-key", timeout=30).json()
    assert key["keyId"] == signed["keyId"]
    # Whole numbers stay whole over REST: the report re-canonicalises to the signed text.
    assert canonical_json(signed["report"]) == signed["canonicalJson"].encode()
    # The attestation-result token checks with a JOSE library against the JWKS.
    jwks = httpx.get(f"{base}/.well-known/jwks.json", timeout=30).json()
    decoded = jwt.decode(
        signed["attestationToken"], KeySet.import_key_set(jwks), algorithms=["EdDSA"]
    )
    assert decoded.header["kid"] == key["keyId"]
    assert decoded.claims["submods"]["dstack"]["x-dstack.verdict"] == "passed"


def test_gateway_process_ends_open_streams_and_exits_on_sigterm(
    process_stack: ProcessStack,
) -> None:
    port = free_port()
    proc = process_stack.start("gateway-drain", "services.gateway", PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        admin = process_stack.admin
        httpx.post(f"{base}/api/v1/queue/pause", headers=admin, timeout=10).raise_for_status()
        task = httpx.post(
            f"{base}/api/v1/tasks",
            json={"appConfigType": "redpill", "modelOrDomain": "org/model"},
            headers=admin,
            timeout=10,
        ).json()
        seen: list[str] = []
        watch = f"{base}/api/v1/tasks/{task['id']}:watch"
        with httpx.stream("GET", watch, headers=admin, timeout=60) as stream:
            for name, _ in _sse(stream.iter_lines()):
                seen.append(name)
                if len(seen) == 1:
                    proc.send_signal(signal.SIGTERM)
        # The stream closed without "end" (the task is not finished): a client reconnects.
        assert seen == ["message"]
        # uvicorn re-raises the signal after its clean shutdown (the POSIX convention).
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        httpx.post(
            f"{process_stack.gateway}/api/v1/queue/resume", headers=process_stack.admin, timeout=10
        )
        _stop(proc)
