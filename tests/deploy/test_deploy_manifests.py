"""docker-compose.yml, deploy/Dockerfile and the Kubernetes manifests, cross-checked
with the code (no Docker engine here): every service has a health check, every
variable is a real setting, ports and addresses agree with shared/config.py's
defaults, every command names a real entry point. And the compose health-check
script against real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from shared import metrics
from shared.config import secret_names, setting_names
from shared.grpc_server import ServiceSpec, start_server
from tests.support.servers import free_port
from tests.support.settings import SETTINGS, load_stack_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"

# Every service's default settings in one namespace (shared ones agree).
_STACK_DEFAULTS = load_stack_settings(env={})
DEFAULTS = SimpleNamespace(
    **{
        name: value
        for service in SETTINGS
        for name, value in dataclasses.asdict(getattr(_STACK_DEFAULTS, service)).items()
    }
)
SETTING_NAMES = {name.upper() for cls in SETTINGS.values() for name in setting_names(cls)}
SECRET_SETTINGS = {name.upper() for cls in SETTINGS.values() for name in secret_names(cls)}
# Our image's services and the setting that gives each one's listen address.
GRPC_SERVICES = {"tasks": 50051, "queue": 50052, "verification": 50053}
OUR_SERVICES = {*GRPC_SERVICES, "gateway", "worker", "migrate"}
ENGINES = {"postgres", "redis", "minio"}
# The gauges the queue service exports (an HPA's External metric must be one).
METRIC_NAMES = {metrics.QUEUE_JOBS._name, metrics.WORKERS._name}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def check_entry_point(command: list[str]) -> None:
    """`python -m <module> [args]` names a module of ours with a main() that accepts args."""
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    assert module.startswith("services."), command
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} does not exist"
    main_module = module if module.endswith((".worker", ".main")) else f"{module}.main"
    source = Path(importlib.util.find_spec(main_module).origin).read_text()  # type: ignore[union-attr, arg-type]
    assert "def main(" in source, f"{main_module} has no main()"
    if module == "services.tasks" or module == "services.verification":
        assert Path(spec.origin).name == "__init__.py"
        assert importlib.util.find_spec(f"{module}.__main__") is not None
    for argument in command[3:]:
        # Sub-commands must be ones the entry point knows.
        assert re.search(rf"['\"]{re.escape(argument)}['\"]", source), (module, argument)


# --- docker compose -------------------------------------------------------------------


def test_compose_runs_the_engines_the_migration_the_four_services_and_a_worker() -> None:
    services = compose()["services"]
    # `certs`: the one-shot job making the dev CA and service certificates.
    assert set(services) == ENGINES | OUR_SERVICES | {"certs"}


def test_every_long_running_compose_service_has_a_health_check() -> None:
    for name, service in compose()["services"].items():
        if name in ("migrate", "certs"):
            assert service["restart"] == "no"  # a one-shot job, done when it exits 0
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", name


def test_compose_health_checks_probe_the_service_own_port() -> None:
    services = compose()["services"]
    for name, port in GRPC_SERVICES.items():
        assert services[name]["healthcheck"]["test"][-2:] == ["grpc", f"127.0.0.1:{port}"]
    gateway_test = services["gateway"]["healthcheck"]["test"]
    assert gateway_test[-1] == f"http://127.0.0.1:{DEFAULTS.port}/health"
    # The queue's internal port: the worker's health check holds the queue certificate.
    assert services["worker"]["healthcheck"]["test"][-2:] == ["worker", "queue:50062"]


def test_compose_commands_name_real_entry_points() -> None:
    for name in OUR_SERVICES:
        check_entry_point(compose()["services"][name]["command"])


def test_compose_variables_are_settings_with_the_reference_names() -> None:
    services = compose()["services"]
    for name in OUR_SERVICES:
        environment = services[name]["environment"]
        unknown = set(environment) - SETTING_NAMES
        assert not unknown, (name, unknown)
        load_stack_settings(env={key: str(value) for key, value in environment.items()})
    environment = services["gateway"]["environment"]
    reference = {
        "DATABASE_URL",
        "REDIS_URL",
        "QUEUE_NAME",
        "QUEUE_CONCURRENCY",
        "S3_ENDPOINT",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "S3_BUCKET",
        "HOST",
        "PORT",
    }
    assert reference <= set(environment)


def test_compose_ports_and_addresses_agree_with_the_defaults() -> None:
    services = compose()["services"]
    environment = services["gateway"]["environment"]
    assert int(environment["PORT"]) == DEFAULTS.port
    assert services["gateway"]["ports"] == [f"{DEFAULTS.port}:{DEFAULTS.port}"]
    assert environment["QUEUE_NAME"] == DEFAULTS.queue_name
    assert int(environment["QUEUE_CONCURRENCY"]) == DEFAULTS.queue_concurrency
    assert environment["S3_BUCKET"] == DEFAULTS.s3_bucket
    for name, port in GRPC_SERVICES.items():
        key = name.upper()
        assert port_of(getattr(DEFAULTS, f"{name}_listen_addr")) == port
        assert port_of(environment[f"{key}_LISTEN_ADDR"]) == port
        # Peers reach a service by its compose name on its listen port.
        assert environment[f"{key}_ADDR"] == f"{name}:{port}"
    assert environment["DATABASE_URL"].split("@")[1].startswith("postgres:5432/")
    assert environment["REDIS_URL"].startswith("redis://redis:6379")
    assert environment["S3_ENDPOINT"] == "http://minio:9000"


def test_compose_credentials_match_between_the_engines_and_the_services() -> None:
    services = compose()["services"]
    environment = services["gateway"]["environment"]
    postgres = services["postgres"]["environment"]
    user_password = f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
    assert f"//{user_password}@" in environment["DATABASE_URL"]
    assert environment["DATABASE_URL"].endswith(f"/{postgres['POSTGRES_DB']}")
    minio = services["minio"]["environment"]
    assert environment["S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert environment["S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_compose_services_start_after_what_they_need() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (
        services["tasks"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )
    assert set(services["gateway"]["depends_on"]) == {*GRPC_SERVICES, "certs"}
    for name in (*GRPC_SERVICES, "worker", "gateway"):
        certs = services[name]["depends_on"]["certs"]
        assert certs["condition"] == "service_completed_successfully", name
    assert services["gateway"]["environment"]["MIGRATE_ON_START"] == "false"


# --- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_builds_the_stubs_and_exposes_the_default_ports() -> None:
    text = DOCKERFILE.read_text()
    assert "RUN make proto" in text
    exposed = {
        int(port) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for port in line.split()
    }
    assert exposed == {DEFAULTS.port, *GRPC_SERVICES.values()}
    default = re.search(r"^CMD (\[.+\])$", text, re.M)
    assert default is not None
    check_entry_point(yaml.safe_load(default.group(1)))
    # Everything the compose health checks run is in the image.
    assert "COPY deploy/healthcheck.py ./deploy/healthcheck.py" in text
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / source).exists(), source


# --- Kubernetes -------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_every_deployment_has_readiness_and_liveness_probes_on_its_health() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {f"verifier-{name}" for name in OUR_SERVICES - {"migrate"}}
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        check_entry_point(container["command"])
        service = name.removeprefix("verifier-")
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container[probe_name]
            if service in GRPC_SERVICES:
                # TLS on the public port: an exec probe (test_deploy_auth.py checks it).
                assert probe["exec"]["command"][-1] == f"127.0.0.1:{GRPC_SERVICES[service]}"
                assert container["ports"][0]["containerPort"] == GRPC_SERVICES[service]
            elif service == "gateway":
                assert probe["httpGet"]["path"] == "/health"
                assert container["ports"][0] == {"name": "http", "containerPort": DEFAULTS.port}
            else:
                assert probe["exec"]["command"][:3] == ["python", "deploy/healthcheck.py", "worker"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_services_route_to_their_deployments_on_the_configured_addresses() -> None:
    services = by_kind("Service")
    deployments = by_kind("Deployment")
    config = by_kind("ConfigMap")["verifier-config"]["data"]
    for name, port in GRPC_SERVICES.items():
        service = services[f"verifier-{name}"]
        assert (
            service["spec"]["selector"]
            == deployments[f"verifier-{name}"]["spec"]["selector"]["matchLabels"]
        )
        assert service["spec"]["ports"][0]["port"] == port
        assert config[f"{name.upper()}_ADDR"] == f"verifier-{name}:{port}"
        assert port_of(config[f"{name.upper()}_LISTEN_ADDR"]) == port
    assert services["verifier-gateway"]["spec"]["ports"][0]["targetPort"] == "http"
    assert int(config["PORT"]) == DEFAULTS.port
    worker = deployments["verifier-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["exec"]["command"][-1] == config["QUEUE_INTERNAL_ADDR"]


def test_configmap_and_secret_hold_settings_and_secrets_only_in_the_secret() -> None:
    config = by_kind("ConfigMap")["verifier-config"]["data"]
    secret = by_kind("Secret")["verifier-secrets"]["stringData"]
    assert set(config) <= SETTING_NAMES
    assert set(secret) <= SETTING_NAMES
    assert not set(config) & SECRET_SETTINGS
    assert {"DATABASE_URL", "REDIS_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} <= set(secret)
    load_stack_settings(env={**config, **secret})
    for deployment in by_kind("Deployment").values():
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "verifier-config"}} in sources
        assert {"secretRef": {"name": "verifier-secrets"}} in sources


def test_gateway_workers_and_verification_scale_horizontally() -> None:
    autoscalers = by_kind("HorizontalPodAutoscaler")
    deployments = by_kind("Deployment")
    targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers.values()}
    assert targets == {"verifier-gateway", "verifier-worker", "verifier-verification"}
    for hpa in autoscalers.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def _hpa_metrics(name: str) -> dict[str, dict[str, Any]]:
    """An autoscaler's metrics by what drives them: "cpu" or the external metric's state."""
    out: dict[str, dict[str, Any]] = {}
    for metric in by_kind("HorizontalPodAutoscaler")[name]["spec"]["metrics"]:
        if metric["type"] == "Resource":
            out[metric["resource"]["name"]] = metric["resource"]["target"]
        else:
            external = metric["external"]
            state = external["metric"]["selector"]["matchLabels"]["state"]
            assert external["metric"]["name"] in METRIC_NAMES, external
            out[state] = external["target"]
    return out


def test_workers_and_verification_scale_on_queue_depth_and_cpu() -> None:
    workers = _hpa_metrics("verifier-worker")
    assert set(workers) == {"cpu", "waiting"}
    verification = _hpa_metrics("verifier-verification")
    assert set(verification) == {"cpu", "active"}
    for target in (workers["waiting"], verification["active"]):
        assert target["type"] == "AverageValue" and int(target["averageValue"]) > 0
    for target in (workers["cpu"], verification["cpu"]):
        assert 0 < target["averageUtilization"] <= 100


def test_migration_job_runs_the_migrate_command() -> None:
    job = by_kind("Job")["verifier-migrate"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.tasks", "migrate"]
    check_entry_point(container["command"])
    config = by_kind("ConfigMap")["verifier-config"]["data"]
    assert config["MIGRATE_ON_START"] == "false"


# --- the health-check script ----------------------------------------------------------


def run_healthcheck(*args: str) -> int:
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], cwd=ROOT, capture_output=True, timeout=30
    )
    return result.returncode


async def test_healthcheck_script_passes_a_serving_grpc_service_and_fails_a_closed_port() -> None:
    running = await start_server(
        ServiceSpec(
            name="probe-target",
            service_names=[],
            register=lambda server: None,
            listen_addr="127.0.0.1:0",
            health_probe_interval_seconds=0.05,
        )
    )
    try:
        await asyncio.sleep(0.2)  # the health loop sets SERVING on its first pass
        code = await asyncio.to_thread(run_healthcheck, "grpc", f"127.0.0.1:{running.port}")
        assert code == 0
    finally:
        await running.stop(0.1)
    closed = await asyncio.to_thread(run_healthcheck, "grpc", f"127.0.0.1:{free_port()}")
    assert closed == 1
    assert await asyncio.to_thread(run_healthcheck, "http", f"http://127.0.0.1:{free_port()}/") == 1


@pytest.mark.parametrize("args", [(), ("bogus", "x"), ("grpc",)])
def test_healthcheck_script_rejects_bad_usage(args: tuple[str, ...]) -> None:
    assert run_healthcheck(*args) == 2
