"""The manifests' side of authentication, checked by parsing them: each pod
mounts its own certificate Secret at TLS_DIR, the internal (mutual-TLS) ports
are exposed and addressed consistently, and NetworkPolicies let each service be
reached only by the peers that call it."""

from __future__ import annotations

from typing import Any

from shared.config import CommonSettings, load_settings
from tests.deploy.test_deploy_manifests import GRPC_SERVICES, by_kind, port_of

INTERNAL = {"tasks": 50061, "queue": 50062, "verification": 50063}
# Who calls whom on the internal ports (the code's internal_channel() calls).
INTERNAL_CALLERS = {
    "tasks": {"verifier-worker", "verifier-queue", "verifier-verification"},
    "queue": {"verifier-tasks", "verifier-worker"},
    "verification": {"verifier-worker", "verifier-queue", "verifier-tasks"},
}
# The certificate each Deployment presents (workers are the queue's).
CERT_OF = {
    "verifier-tasks": "tasks",
    "verifier-queue": "queue",
    "verifier-verification": "verification",
    "verifier-gateway": "gateway",
    "verifier-worker": "queue",
}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_production_config_turns_authentication_and_tls_on() -> None:
    config = by_kind("ConfigMap")["verifier-config"]["data"]
    settings = load_settings(CommonSettings, env=config)
    assert settings.auth_enabled and settings.tls_public
    assert settings.environment == "production"  # plaintext off loopback refuses to start
    for name, port in INTERNAL.items():
        assert port_of(config[f"{name.upper()}_INTERNAL_LISTEN_ADDR"]) == port
        assert config[f"{name.upper()}_INTERNAL_ADDR"] == f"verifier-{name}:{port}"


def test_every_pod_mounts_its_own_certificate_secret_at_tls_dir() -> None:
    tls_dir = by_kind("ConfigMap")["verifier-config"]["data"]["TLS_DIR"]
    for name, deployment in by_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["name"]: m for m in _container(deployment).get("volumeMounts", [])}
        assert mounts["tls"]["mountPath"] == tls_dir and mounts["tls"]["readOnly"], name
        assert volumes["tls"]["secret"]["secretName"] == f"verifier-tls-{CERT_OF[name]}", name


def test_internal_ports_are_exposed_by_deployments_and_services() -> None:
    services = by_kind("Service")
    deployments = by_kind("Deployment")
    for name, port in INTERNAL.items():
        ports = {p["name"]: p for p in services[f"verifier-{name}"]["spec"]["ports"]}
        assert ports["internal"]["port"] == port and ports["internal"]["targetPort"] == "internal"
        container = _container(deployments[f"verifier-{name}"])
        assert {"name": "internal", "containerPort": port} in container["ports"]


def _policy_for(app: str) -> dict[str, Any]:
    for policy in by_kind("NetworkPolicy").values():
        labels = policy["spec"]["podSelector"].get("matchLabels", {})
        if labels.get("app.kubernetes.io/name") == app:
            return policy
    raise AssertionError(f"no NetworkPolicy selects {app}")


def _sources_by_port(policy: dict[str, Any]) -> dict[int, set[str] | None]:
    """Port -> the pod names allowed (None: any source)."""
    out: dict[int, set[str] | None] = {}
    for rule in policy["spec"]["ingress"]:
        sources = rule.get("from")
        names = (
            None
            if not sources
            else {s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in sources}
        )
        for port in rule["ports"]:
            out[int(port["port"])] = names
    return out


def test_a_default_deny_covers_every_verifier_pod() -> None:
    deny = by_kind("NetworkPolicy")["verifier-default-deny-ingress"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    selected = set(deny["podSelector"]["matchExpressions"][0]["values"])
    assert selected == set(by_kind("Deployment"))


def test_each_service_takes_ingress_only_from_its_callers() -> None:
    for name, public in GRPC_SERVICES.items():
        allowed = _sources_by_port(_policy_for(f"verifier-{name}"))
        assert allowed[public] == {"verifier-gateway"}, name
        assert allowed[INTERNAL[name]] == INTERNAL_CALLERS[name], name
        # Nothing else reaches the gRPC ports; only metrics are open in the cluster.
        open_ports = {port for port, sources in allowed.items() if sources is None}
        assert open_ports and all(port >= 9000 for port in open_ports), (name, open_ports)
    assert _sources_by_port(_policy_for("verifier-gateway")) == {3000: None}


def test_grpc_probes_speak_tls_through_the_health_check_script() -> None:
    deployments = by_kind("Deployment")
    for name, port in GRPC_SERVICES.items():
        container = _container(deployments[f"verifier-{name}"])
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command == ["python", "deploy/healthcheck.py", "grpc", f"127.0.0.1:{port}"]
    worker = _container(deployments["verifier-worker"])
    assert worker["readinessProbe"]["exec"]["command"][-1] == "verifier-queue:50062"
