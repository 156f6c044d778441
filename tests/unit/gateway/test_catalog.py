"""Route discovery from the generated descriptors: every annotated RPC, nothing else."""

from __future__ import annotations

import pytest

from services.gateway.catalog import RouteTable, build_routes, discover_services, target_key
from services.gateway.errors import RouteConfigError
from tests.unit.gateway.things import thing_service

TARGETS = {"tasks": "t:1", "queue": "q:1", "verification": "v:1"}


def test_services_are_discovered_from_the_generated_modules() -> None:
    names = {service.full_name for service in discover_services()}
    assert {
        "verifier.tasks.v1.TaskService",
        "verifier.queue.v1.QueueService",
        "verifier.verification.v1.VerificationService",
    } <= names


def test_target_key_is_the_package_name_without_version() -> None:
    by_name = {service.full_name: service for service in discover_services()}
    assert target_key(by_name["verifier.tasks.v1.TaskService"]) == "tasks"
    assert target_key(by_name["verifier.verification.v1.VerificationService"]) == "verification"
    assert target_key(thing_service()) == "gatewaytest"


def test_every_annotated_method_and_only_those_is_routed() -> None:
    routes = build_routes(discover_services(), TARGETS)
    routed = {route.rpc.path for route in routes}
    for service in discover_services():
        for method in service.methods:
            annotated = method.GetOptions().ListFields() != []
            path = f"/{service.full_name}/{method.name}"
            assert (path in routed) == annotated, path


def test_service_without_a_target_is_skipped() -> None:
    routes = build_routes(discover_services(), {"tasks": "t:1"})
    assert {route.rpc.target for route in routes} == {"tasks"}


def test_additional_bindings_become_routes() -> None:
    routes = build_routes([thing_service()], {"gatewaytest": "g:1"})
    create = [r for r in routes if r.rpc.method.name == "CreateThing"]
    assert {(r.http_method, r.template.template) for r in create} == {
        ("POST", "/v1/shelves/{shelf.id}/things"),
        ("POST", "/v1/things:create"),
        ("PUT", "/v1/shelves/{shelf.id}/things:replace"),
    }


def test_table_tells_not_found_from_method_not_allowed() -> None:
    table = RouteTable(build_routes(discover_services(), TARGETS))
    found = table.match("GET", "/api/v1/tasks/t1:watch")
    assert not isinstance(found, list) and found is not None
    assert found.route.rpc.method.name == "WatchTask"
    assert table.match("PATCH", "/api/v1/tasks/t1") == ["GET", "DELETE"]
    assert table.match("GET", "/api/v2/tasks") is None


def test_the_same_binding_twice_is_a_configuration_error() -> None:
    services = discover_services()
    with pytest.raises(RouteConfigError, match="bound twice"):
        build_routes(
            [*services, *services[:0], *[s for s in services if "Task" in s.name]], TARGETS
        )
