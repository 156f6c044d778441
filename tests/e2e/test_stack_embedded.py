"""`make run`'s stack on embedded defaults (SQLite, in-process queue, local
report folder), as processes: a task created through grpcurl with inline
evidence completes, and the gateway answers REST."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import VENV_BIN, free_port
from tests.support.vectors import dstack_create_task_json

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
GRPCURL = str(VENV_BIN / "grpcurl")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """`make run` on a fresh data folder: it makes the certificates and the admin key."""
    ports = {name: free_port() for name in ("tasks", "queue", "verification", "gateway")}
    data_dir = tmp_path_factory.mktemp("stack-data")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "VERIFIER_CONFIG")
    }
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "HOST": "127.0.0.1",
            "PORT": str(ports["gateway"]),
            "LOG_LEVEL": "warning",
        }
    )
    for name in ("tasks", "queue", "verification"):
        env[f"{name.upper()}_LISTEN_ADDR"] = f"127.0.0.1:{ports[name]}"
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{ports[name]}"
        internal = free_port()
        env[f"{name.upper()}_INTERNAL_LISTEN_ADDR"] = f"127.0.0.1:{internal}"
        env[f"{name.upper()}_INTERNAL_ADDR"] = f"127.0.0.1:{internal}"
    log = open(tmp_path_factory.mktemp("stack-log") / "stack.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        # make run asks every service for its settings first, then starts them.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            if all(_serving(ports[name]) for name in ("tasks", "queue", "verification")):
                break
            time.sleep(0.5)
        else:
            pytest.fail("stack did not become healthy:\n" + Path(log.name).read_text()[-3000:])
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert str(key_file) in Path(log.name).read_text()  # it says where the key is
        ADMIN["authorization"] = f"Bearer {key_file.read_text().strip()}"
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# The admin key `make run` wrote on its first start (set by the fixture).
ADMIN: dict[str, str] = {}


def _grpcurl(*args: str, data: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext"]
    if ADMIN:
        cmd += ["-H", f"authorization: {ADMIN['authorization']}"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)


def _serving(port: int) -> bool:
    result = _grpcurl(f"127.0.0.1:{port}", "grpc.health.v1.Health/Check")
    return result.returncode == 0 and '"SERVING"' in result.stdout


def test_task_created_through_grpcurl_with_inline_evidence_completes(
    stack: dict[str, int],
) -> None:
    target = f"127.0.0.1:{stack['tasks']}"
    created = _grpcurl(
        target, "verifier.tasks.v1.TaskService/CreateTask", data=dstack_create_task_json()
    )
    assert created.returncode == 0, created.stderr
    task_id = json.loads(created.stdout)["task"]["id"]
    deadline = time.monotonic() + 60
    task: dict[str, object] = {}
    while time.monotonic() < deadline:
        got = _grpcurl(target, "verifier.tasks.v1.TaskService/GetTask", data={"id": task_id})
        assert got.returncode == 0, got.stderr
        task = json.loads(got.stdout)["task"]
        if task["status"] in ("TASK_STATUS_COMPLETED", "TASK_STATUS_FAILED"):
            break
        time.sleep(0.3)
    assert task["status"] == "TASK_STATUS_COMPLETED", task
    assert task["progress"] == 100
    statuses = {c["check"]: c["status"] for c in task["check_results"]}  # type: ignore[attr-defined]
    assert statuses["CHECK_HARDWARE"] == "CHECK_STATUS_PASSED"
    assert statuses["CHECK_OS"] == "CHECK_STATUS_PASSED"
    assert statuses["CHECK_SOURCE_CODE"] == "CHECK_STATUS_PASSED"
    assert task["s3_key"]  # grpcurl prints proto field names


def test_gateway_serves_rest_on_the_embedded_stack(stack: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{stack['gateway']}"
    for _ in range(60):
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    anonymous = httpx.get(f"{base}/api/v1/tasks", timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"]
    response = httpx.post(
        f"{base}/api/v1/tasks", json={"appConfigType": "nonsense"}, headers=ADMIN, timeout=10
    )
    assert response.status_code == 400
    listed = httpx.get(f"{base}/api/v1/tasks", params={"pageSize": 5}, headers=ADMIN, timeout=10)
    assert listed.status_code == 200
    assert "tasks" in listed.json()
