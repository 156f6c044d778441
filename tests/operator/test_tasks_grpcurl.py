"""Operators drive the tasks service with the real grpcurl binary: the service
runs as `python -m services.tasks` on the embedded SQLite default, with no
queue reachable (tasks stay PENDING; health still serves). Authentication is
on: health and reflection answer anyone, the RPCs want the operator's key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.auth import auth_env, bootstrap_admin_key
from tests.support.servers import VENV_BIN, free_port

pytestmark = pytest.mark.operator
ROOT = Path(__file__).resolve().parents[2]
GRPCURL = str(VENV_BIN / "grpcurl")


# The admin key, once the fixture made it; health and reflection go without.
KEY: list[str] = []


def grpcurl(
    *args: str, data: object | None = None, key: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [GRPCURL, "-plaintext"]
    if key and KEY:
        command += ["-H", f"authorization: Bearer {KEY[0]}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)


def _env(tmp: Path, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "VERIFIER_CONFIG")
    }
    env.update(
        {
            "DATA_DIR": str(tmp),
            "TASKS_LISTEN_ADDR": f"127.0.0.1:{port}",
            "QUEUE_ADDR": f"127.0.0.1:{free_port()}",  # nothing listens there
            "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
            "LOG_LEVEL": "warning",
        }
    )
    return auth_env(env, tmp)


@pytest.fixture(scope="module")
def tasks_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("tasks-operator")
    port = free_port()
    env = _env(tmp, port)
    KEY[:] = [bootstrap_admin_key(env)]
    log = open(tmp / "tasks.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.tasks"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "tasks.log").read_text()[-3000:]
            if '"SERVING"' in grpcurl(addr, "grpc.health.v1.Health/Check").stdout:
                break
            time.sleep(0.3)
        else:
            pytest.fail("tasks service did not serve:\n" + (tmp / "tasks.log").read_text()[-3000:])
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_list_shows_the_task_service_health_and_reflection(tasks_addr: str) -> None:
    result = grpcurl(tasks_addr, "list", key=False)
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        "verifier.tasks.v1.TaskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_describe_shows_the_rpcs_and_messages(tasks_addr: str) -> None:
    service = grpcurl(tasks_addr, "describe", "verifier.tasks.v1.TaskService")
    assert service.returncode == 0, service.stderr
    for rpc in ("CreateTask", "GetTask", "ListTasks", "CancelTask", "WatchTask", "ListTaskEvents"):
        assert f"rpc {rpc}" in service.stdout
    message = grpcurl(tasks_addr, "describe", "verifier.tasks.v1.Task")
    assert message.returncode == 0 and "app_config_type" in message.stdout


def test_create_then_get_round_trip_with_rest_style_json(tasks_addr: str) -> None:
    created = grpcurl(
        tasks_addr,
        "verifier.tasks.v1.TaskService/CreateTask",
        data={
            "appId": "operator-app",
            "appName": "Operator demo",
            "appConfigType": "APP_CONFIG_TYPE_REDPILL",
            "modelOrDomain": "phala/deepseek",
            "verificationFlags": {"dnsCAA": True},
            "requestId": "operator-1",
        },
    )
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task"]
    assert task["status"] == "TASK_STATUS_PENDING"
    # grpcurl prints proto field names (json_name only where the proto sets one).
    assert task["verification_flags"]["dnsCAA"] is True
    assert task["verification_flags"]["hardware"] is True

    fetched = grpcurl(tasks_addr, "verifier.tasks.v1.TaskService/GetTask", data={"id": task["id"]})
    assert fetched.returncode == 0, fetched.stderr
    again = json.loads(fetched.stdout)["task"]
    assert again["id"] == task["id"] and again["app_id"] == "operator-app"
    assert again["model_or_domain"] == "phala/deepseek"


def test_bad_request_is_invalid_argument_naming_the_field(tasks_addr: str) -> None:
    result = grpcurl(
        tasks_addr,
        "verifier.tasks.v1.TaskService/CreateTask",
        data={"appConfigType": "APP_CONFIG_TYPE_REDPILL", "contractAddress": "0x12"},
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "contract_address" in result.stderr


def test_health_check_serves_without_the_queue(tasks_addr: str) -> None:
    result = grpcurl(
        tasks_addr,
        "grpc.health.v1.Health/Check",
        data={"service": "verifier.tasks.v1.TaskService"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "SERVING"
    deps = grpcurl(tasks_addr, "verifier.ops.v1.DiagnosticsService/CheckDependencies")
    states = {d["name"]: d for d in json.loads(deps.stdout)["dependencies"]}
    assert states["database"]["state"] == "DEPENDENCY_STATE_UP"
    assert states["queue"]["state"] == "DEPENDENCY_STATE_DOWN"


def test_rpc_without_a_key_is_unauthenticated_and_health_is_open(tasks_addr: str) -> None:
    refused = grpcurl(tasks_addr, "verifier.tasks.v1.TaskService/ListTasks", key=False)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    health = grpcurl(tasks_addr, "grpc.health.v1.Health/Check", key=False)
    assert health.returncode == 0 and '"SERVING"' in health.stdout
